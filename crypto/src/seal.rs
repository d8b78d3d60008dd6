//! Sealed chunks and records: cleartext header (all of it AAD) + XChaCha20-Poly1305 over
//! `inner header || content (zstd when it pays) || zero padding to the PADME length` + tag.
//!
//! The byte layout is specified in `docs/FORMAT.md` ("Sealed objects").

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use crate::error::{OpenError, SealError};
use crate::ids::{ChunkId, EntryKey, Epoch, VaultId, VersionId};
use crate::keys::{EpochKeys, KEY_CHECK_LEN, Keyring, ct_eq};
use crate::padme::padme_len;

mod aead;

/// Largest plaintext one sealed object may hold: 64 MiB.
pub const MAX_PLAINTEXT_LEN: usize = 64 << 20;
/// zstd level used for sealed content.
pub const ZSTD_LEVEL: i32 = 1;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the encrypted inner header: flags (1), stored length (4), original length (4).
pub const INNER_HEADER_LEN: usize = 9;
/// Length of a sealed chunk's cleartext header.
pub const CHUNK_HEADER_LEN: usize = OFF_ID + 32;
/// Length of a sealed record's cleartext header.
pub const RECORD_HEADER_LEN: usize = OFF_ID + 32 + 16;

/// Inputs shorter than this are never compressed.
pub const MIN_COMPRESS_LEN: usize = 128;
/// Compression is skipped when the estimated byte entropy exceeds this many bits per byte.
pub const ENTROPY_SKIP_BITS: f64 = 7.2;
/// Bytes sampled for the entropy estimate: 8 windows of 64 bytes spread across the input.
/// Random bytes estimate at 7.90 ± 0.04 bits from 512 samples, far from the threshold.
const SAMPLE_WINDOW: usize = 64;
const SAMPLE_WINDOWS: usize = 8;
const SAMPLE_LEN: usize = SAMPLE_WINDOW * SAMPLE_WINDOWS;
/// The AAD is the header followed by zero bytes up to a multiple of this (see FORMAT.md: the
/// AVX2 Poly1305 backend stays on its four-block fast path only when the AAD fills whole
/// 64-byte groups).
const AAD_ALIGN: usize = 64;
/// AAD length of both chunks (90-byte header) and records (106-byte header).
const AAD_LEN: usize = 128;

const FLAG_ZSTD: u8 = 0x01;

// Offsets of the common header fields (see FORMAT.md).
const OFF_VERSION: usize = 0;
const OFF_KIND: usize = 1;
const OFF_VAULT: usize = 2;
const OFF_EPOCH: usize = 18;
const OFF_BODY_LEN: usize = 22;
const OFF_KEY_CHECK: usize = 26;
const OFF_NONCE: usize = 34;
const OFF_ID: usize = 58;

/// Smallest body: the padded inner header of an empty plaintext.
const MIN_BODY_LEN: usize = 10;

/// The largest body a sealed object may declare: `padme_len(9 + MAX_PLAINTEXT_LEN)`.
pub fn max_body_len() -> usize {
    padded(INNER_HEADER_LEN + MAX_PLAINTEXT_LEN)
}

/// An upper bound of the sealed length of a chunk of `plaintext_len` bytes (the exact length
/// when it is not compressed). Useful to reserve buffers.
pub fn max_sealed_chunk_len(plaintext_len: usize) -> usize {
    CHUNK_HEADER_LEN + padded(INNER_HEADER_LEN.saturating_add(plaintext_len)) + TAG_LEN
}

fn padded(len: usize) -> usize {
    usize::try_from(padme_len(len as u64)).unwrap_or(usize::MAX)
}

/// What a versioned object is; the second byte of every sealed object and envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A sealed chunk (kind byte 1).
    Chunk,
    /// A sealed record (kind byte 2).
    Record,
    /// A vault key wrapped to a device (kind byte 3).
    DeviceEnvelope,
    /// A vault key wrapped to a recovery secret (kind byte 4).
    RecoveryEnvelope,
}

impl ObjectKind {
    /// The kind byte.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Chunk => 1,
            Self::Record => 2,
            Self::DeviceEnvelope => 3,
            Self::RecoveryEnvelope => 4,
        }
    }

    /// The kind of a kind byte, if known.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Chunk),
            2 => Some(Self::Record),
            3 => Some(Self::DeviceEnvelope),
            4 => Some(Self::RecoveryEnvelope),
            _ => None,
        }
    }

    pub(crate) fn describe_byte(b: u8) -> String {
        match Self::from_byte(b) {
            Some(k) => format!("a {k} (kind byte {b})"),
            None => format!("unknown kind byte {b}"),
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Chunk => "sealed chunk",
            Self::Record => "sealed record",
            Self::DeviceEnvelope => "device envelope",
            Self::RecoveryEnvelope => "recovery envelope",
        })
    }
}

/// The id a sealed object is bound to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SealedId {
    /// A chunk's id.
    Chunk(ChunkId),
    /// A record's entry key and version id.
    Record {
        /// The entry key.
        entry: EntryKey,
        /// The version id.
        version: VersionId,
    },
}

/// The cleartext header of a sealed object, readable without keys (the server may check a
/// blob's vault, id and length with it; see [`SealedHeader::sealed_len`] for packs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct SealedHeader {
    /// [`ObjectKind::Chunk`] or [`ObjectKind::Record`].
    pub kind: ObjectKind,
    /// The vault.
    pub vault: VaultId,
    /// The epoch whose key sealed it.
    pub epoch: Epoch,
    /// Length of the encrypted body (inner header, content and padding), without the tag.
    pub body_len: u32,
    /// Key-check value of the seal key.
    pub key_check: [u8; KEY_CHECK_LEN],
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The id it is bound to.
    pub id: SealedId,
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

impl SealedHeader {
    /// Parses a sealed chunk's header from the start of `bytes` (which may hold more, as in a
    /// pack). Checks, in order: length of the header (`Truncated`), version, kind, and that the
    /// declared body length is one a sealer could have written (`Malformed`).
    pub fn parse_chunk(bytes: &[u8]) -> Result<Self, OpenError> {
        Self::parse(bytes, ObjectKind::Chunk)
    }

    /// Parses a sealed record's header; see [`SealedHeader::parse_chunk`].
    pub fn parse_record(bytes: &[u8]) -> Result<Self, OpenError> {
        Self::parse(bytes, ObjectKind::Record)
    }

    fn parse(bytes: &[u8], expected: ObjectKind) -> Result<Self, OpenError> {
        let header_len = match expected {
            ObjectKind::Record => RECORD_HEADER_LEN,
            _ => CHUNK_HEADER_LEN,
        };
        let Some(header) = bytes.get(..header_len) else {
            return Err(OpenError::Truncated {
                needed: header_len,
                got: bytes.len(),
            });
        };
        let version = header.get(OFF_VERSION).copied().unwrap_or(0);
        if version != crate::FORMAT_VERSION {
            return Err(OpenError::UnknownVersion(version));
        }
        let kind = header.get(OFF_KIND).copied().unwrap_or(0);
        if kind != expected.byte() {
            return Err(OpenError::WrongKind {
                expected,
                found: kind,
            });
        }
        let body_len = u32::from_be_bytes(array(header, OFF_BODY_LEN));
        let body = body_len as usize;
        if body < MIN_BODY_LEN {
            return Err(OpenError::Malformed(
                "declared body length is shorter than the inner header",
            ));
        }
        if body > max_body_len() {
            return Err(OpenError::Malformed(
                "declared body length exceeds the 64 MiB plaintext limit",
            ));
        }
        if padded(body) != body {
            return Err(OpenError::Malformed(
                "declared body length is not a PADME length",
            ));
        }
        let id = match expected {
            ObjectKind::Record => SealedId::Record {
                entry: EntryKey::from_bytes(array(header, OFF_ID)),
                version: VersionId(array(header, OFF_ID + 32)),
            },
            _ => SealedId::Chunk(ChunkId::from_bytes(array(header, OFF_ID))),
        };
        Ok(Self {
            kind: expected,
            vault: VaultId(array(header, OFF_VAULT)),
            epoch: Epoch(u32::from_be_bytes(array(header, OFF_EPOCH))),
            body_len,
            key_check: array(header, OFF_KEY_CHECK),
            nonce: array(header, OFF_NONCE),
            id,
        })
    }

    /// Length of the cleartext header.
    pub fn header_len(&self) -> usize {
        match self.kind {
            ObjectKind::Record => RECORD_HEADER_LEN,
            _ => CHUNK_HEADER_LEN,
        }
    }

    /// Length of the whole sealed object: header, body and tag.
    pub fn sealed_len(&self) -> usize {
        self.header_len() + self.body_len as usize + TAG_LEN
    }
}

// ---------------------------------------------------------------------------------------------
// Compression helpers

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Fixed-point scale of [`c_log2_c`]: 16 fractional bits. Integer sums do not form a chain of
/// floating-point additions (4 cycles each) over the 256 bins.
const C_LOG2_C_ONE: f64 = 65_536.0;

/// `c * log2(c)` for every count a sample can hold, in units of `1 / C_LOG2_C_ONE`. The
/// largest, `512 * 9 * 2^16`, and the sum over a histogram of 512 samples both fit in u32.
fn c_log2_c() -> &'static [u32; SAMPLE_LEN + 1] {
    static TABLE: OnceLock<Box<[u32; SAMPLE_LEN + 1]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u32; SAMPLE_LEN + 1]);
        for (c, v) in t.iter_mut().enumerate().skip(1) {
            let c = c as f64;
            *v = (c * c.log2() * C_LOG2_C_ONE).round() as u32;
        }
        t
    })
}

/// Estimated Shannon entropy in bits per byte of `data`, from a byte histogram over at most
/// 512 bytes sampled from across it: 8 windows of 64 bytes at evenly spaced offsets (all of
/// `data` if shorter). The estimate is the histogram's entropy plus the Miller–Madow
/// correction `(bins used - 1) / (2 n ln 2)`: a histogram of only `n` = 512 samples
/// underestimates the entropy of random bytes by about 0.4 bits (7.59 instead of 8; 7.90 with
/// the correction), and the correction keeps [`ENTROPY_SKIP_BITS`] meaning the same as with
/// larger samples.
fn sampled_entropy(data: &[u8]) -> f64 {
    // Four histograms, so repeated bytes do not serialise on one counter. Counts stay below
    // `u16::MAX` because at most SAMPLE_LEN bytes are counted.
    let mut h = [[0u16; 256]; 4];
    let mut count = |s: &[u8]| {
        let mut quads = s.chunks_exact(4);
        for q in &mut quads {
            h[0][usize::from(q[0])] += 1;
            h[1][usize::from(q[1])] += 1;
            h[2][usize::from(q[2])] += 1;
            h[3][usize::from(q[3])] += 1;
        }
        for &b in quads.remainder() {
            h[0][usize::from(b)] += 1;
        }
    };
    if data.len() <= SAMPLE_LEN {
        count(data);
    } else {
        let stride = (data.len() - SAMPLE_WINDOW) / (SAMPLE_WINDOWS - 1);
        for i in 0..SAMPLE_WINDOWS {
            let at = i * stride;
            if let Some(w) = data.get(at..at + SAMPLE_WINDOW) {
                count(w);
            }
        }
    }
    let table = c_log2_c();
    let (mut n, mut used, mut sum) = (0usize, 0usize, 0u64);
    let [h0, h1, h2, h3] = &h;
    for (((a, b), c), d) in h0.iter().zip(h1).zip(h2).zip(h3) {
        let c = usize::from(*a) + usize::from(*b) + usize::from(*c) + usize::from(*d);
        n += c;
        used += usize::from(c != 0);
        sum += u64::from(table.get(c).copied().unwrap_or(0));
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let plug_in = n.log2() - sum as f64 / C_LOG2_C_ONE / n;
    let miller_madow = used.saturating_sub(1) as f64 / (2.0 * n * std::f64::consts::LN_2);
    plug_in + miller_madow
}

/// Whether a compression attempt may pay: long enough and not high-entropy.
fn worth_compressing(data: &[u8]) -> bool {
    data.len() >= MIN_COMPRESS_LEN && sampled_entropy(data) <= ENTROPY_SKIP_BITS
}

/// Appends the zstd frame of `data` to `out` (whose spare capacity must hold
/// `compress_bound`); returns its length, or `None` if compression failed.
fn compress_append(data: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
        }
        let compressor = slot.as_mut()?;
        let start = out.len();
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        match compressor.compress_to_buffer(data, &mut cursor) {
            Ok(n) => Some(n),
            Err(_) => {
                out.truncate(start);
                None
            }
        }
    })
}

/// Decompresses `data`, which must expand to exactly `original_len` bytes.
fn decompress_exact(data: &[u8], original_len: usize) -> Result<Vec<u8>, OpenError> {
    let mut out = Vec::with_capacity(original_len);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| OpenError::Decompress("decompressor busy".into()))?;
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| OpenError::Decompress(format!("cannot make a decoder: {e}")))?,
            );
        }
        let Some(d) = slot.as_mut() else {
            return Err(OpenError::Decompress("no decoder".into()));
        };
        d.decompress_to_buffer(data, &mut out)
            .map_err(|e| OpenError::Decompress(e.to_string()))
    })?;
    if out.len() != original_len {
        return Err(OpenError::Decompress(format!(
            "content expands to {} bytes, the header declares {original_len}",
            out.len()
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Sealing

struct SealParams<'a> {
    key: &'a [u8; 32],
    key_check: &'a [u8; KEY_CHECK_LEN],
    kind: ObjectKind,
    vault: VaultId,
    epoch: Epoch,
    /// Chunk id (32) or entry key (32) || version id (16).
    id: &'a [u8],
}

fn seal_into(
    p: &SealParams<'_>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let n = plaintext.len();
    let too_large = || SealError::TooLarge {
        len: n,
        max: MAX_PLAINTEXT_LEN,
    };
    if n > MAX_PLAINTEXT_LEN {
        return Err(too_large());
    }
    let header_len = OFF_ID + p.id.len();
    let stored_len = padded(INNER_HEADER_LEN + n);

    // Compressed: header, inner header and the zstd frame are written into `out`, then the
    // body is encrypted in place.
    if worth_compressing(plaintext) {
        out.clear();
        out.reserve(header_len + stored_len + TAG_LEN);
        out.resize(header_len + INNER_HEADER_LEN, 0);
        out.reserve(zstd::zstd_safe::compress_bound(n));
        if let Some(c) = compress_append(plaintext, out)
            && padded(INNER_HEADER_LEN + c) < stored_len
        {
            let body_len = padded(INNER_HEADER_LEN + c);
            out.resize(header_len + body_len + TAG_LEN, 0);
            let (header, body) = out.split_at_mut(header_len);
            write_header(p, nonce, body_len, header);
            write_inner_header(FLAG_ZSTD, c, n, body);
            let (body, tag) = body.split_at_mut(body_len);
            let t = aead::encrypt_detached(p.key, nonce, &padded_aad(header), body, body_len, &[])
                .map_err(|_| too_large())?;
            tag.copy_from_slice(&t);
            return Ok(());
        }
        // zstd did not shrink the padded size: store the plaintext as is.
    }

    // Stored as is: the plaintext is encrypted straight into `out`, never copied there first.
    // `resize` keeps what `out` held (it is all overwritten), so a reused buffer is not
    // zero-filled either.
    out.resize(header_len + stored_len + TAG_LEN, 0);
    let (header, body) = out.split_at_mut(header_len);
    write_header(p, nonce, stored_len, header);
    write_inner_header(0, n, n, body);
    let (body, tag) = body.split_at_mut(stored_len);
    let t = aead::encrypt_detached(
        p.key,
        nonce,
        &padded_aad(header),
        body,
        INNER_HEADER_LEN,
        plaintext,
    )
    .map_err(|_| too_large())?;
    tag.copy_from_slice(&t);
    Ok(())
}

/// Writes the cleartext header into `header` (exactly the header's length), at the offsets
/// [`SealedHeader::parse_chunk`] reads.
fn write_header(p: &SealParams<'_>, nonce: &[u8; NONCE_LEN], body_len: usize, header: &mut [u8]) {
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = header.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(OFF_VERSION, &[crate::FORMAT_VERSION]);
    put(OFF_KIND, &[p.kind.byte()]);
    put(OFF_VAULT, &p.vault.0);
    put(OFF_EPOCH, &p.epoch.0.to_be_bytes());
    // `body_len` <= `max_body_len()` fits in u32.
    put(OFF_BODY_LEN, &(body_len as u32).to_be_bytes());
    put(OFF_KEY_CHECK, p.key_check);
    put(OFF_NONCE, nonce);
    put(OFF_ID, p.id);
}

/// Writes the inner header (flags, stored length, original length) at the start of `body`.
fn write_inner_header(flags: u8, stored: usize, original: usize, body: &mut [u8]) {
    // Both are at most 64 MiB plus a zstd frame's overhead: they fit in u32.
    let mut inner = [0u8; INNER_HEADER_LEN];
    inner[0] = flags;
    inner[1..5].copy_from_slice(&(stored as u32).to_be_bytes());
    inner[5..].copy_from_slice(&(original as u32).to_be_bytes());
    if let Some(dst) = body.get_mut(..INNER_HEADER_LEN) {
        dst.copy_from_slice(&inner);
    }
}

/// The AAD of a header: the header, then zero bytes up to [`AAD_LEN`].
pub(crate) fn padded_aad(header: &[u8]) -> [u8; AAD_LEN] {
    const _: () = assert!(AAD_LEN.is_multiple_of(AAD_ALIGN) && RECORD_HEADER_LEN <= AAD_LEN);
    let mut aad = [0u8; AAD_LEN];
    if let Some(dst) = aad.get_mut(..header.len()) {
        dst.copy_from_slice(header);
    }
    aad
}

fn random_nonce() -> Result<[u8; NONCE_LEN], SealError> {
    Ok(crate::nonce::random_nonce()?)
}

fn record_id(entry: &EntryKey, version: &VersionId) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[..32].copy_from_slice(entry.as_bytes());
    id[32..].copy_from_slice(&version.0);
    id
}

impl EpochKeys {
    fn chunk_params<'a>(&'a self, id: &'a ChunkId) -> SealParams<'a> {
        SealParams {
            key: &self.chunk_seal_key,
            key_check: &self.chunk_key_check,
            kind: ObjectKind::Chunk,
            vault: self.vault(),
            epoch: self.epoch(),
            id: id.as_bytes(),
        }
    }

    fn record_params<'a>(&'a self, id: &'a [u8; 48]) -> SealParams<'a> {
        SealParams {
            key: &self.record_seal_key,
            key_check: &self.record_key_check,
            kind: ObjectKind::Record,
            vault: self.vault(),
            epoch: self.epoch(),
            id,
        }
    }

    /// Seals a chunk whose id is `id` (which the caller computed with
    /// [`VaultIdentityKeys::chunk_id`](crate::VaultIdentityKeys::chunk_id); it is not
    /// recomputed here, opening checks it).
    pub fn seal_chunk(&self, id: &ChunkId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        self.seal_chunk_into(id, plaintext, &mut out)?;
        Ok(out)
    }

    /// Like [`EpochKeys::seal_chunk`], writing into `out` (its old content replaced, its
    /// allocation reused). Incompressible input costs an entropy estimate over 512 sampled
    /// bytes and no compression attempt, and is encrypted straight from `plaintext` into `out`.
    pub fn seal_chunk_into(
        &self,
        id: &ChunkId,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let nonce = random_nonce()?;
        seal_into(&self.chunk_params(id), plaintext, &nonce, out)
    }

    /// Seals a record (the encrypted description of one version of one entry).
    pub fn seal_record(
        &self,
        entry: &EntryKey,
        version: &VersionId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        self.seal_record_into(entry, version, plaintext, &mut out)?;
        Ok(out)
    }

    /// Like [`EpochKeys::seal_record`], writing into `out` (cleared first).
    pub fn seal_record_into(
        &self,
        entry: &EntryKey,
        version: &VersionId,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let nonce = random_nonce()?;
        let id = record_id(entry, version);
        seal_into(&self.record_params(&id), plaintext, &nonce, out)
    }

    /// Seals a chunk with a caller-chosen nonce. For test vectors only: reusing a nonce
    /// under one key breaks confidentiality.
    #[doc(hidden)]
    pub fn seal_chunk_with_nonce(
        &self,
        id: &ChunkId,
        plaintext: &[u8],
        nonce: &[u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        seal_into(&self.chunk_params(id), plaintext, nonce, out)
    }

    /// Seals a record with a caller-chosen nonce. For test vectors only.
    #[doc(hidden)]
    pub fn seal_record_with_nonce(
        &self,
        entry: &EntryKey,
        version: &VersionId,
        plaintext: &[u8],
        nonce: &[u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let id = record_id(entry, version);
        seal_into(&self.record_params(&id), plaintext, nonce, out)
    }
}

// ---------------------------------------------------------------------------------------------
// Opening

/// Opens `sealed` into `out` (cleared first). Checks in the order documented on [`OpenError`].
fn open_into(
    ring: &Keyring,
    expected_kind: ObjectKind,
    expected_id: &SealedId,
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), OpenError> {
    let h = SealedHeader::parse(sealed, expected_kind)?;
    let total = h.sealed_len();
    if sealed.len() < total {
        return Err(OpenError::Truncated {
            needed: total,
            got: sealed.len(),
        });
    }
    if sealed.len() > total {
        return Err(OpenError::TrailingBytes {
            expected: total,
            got: sealed.len(),
        });
    }
    if h.vault != ring.vault() {
        return Err(OpenError::WrongVault {
            expected: ring.vault(),
            found: h.vault,
        });
    }
    match (expected_id, &h.id) {
        (SealedId::Chunk(want), SealedId::Chunk(got)) if want != got => {
            return Err(OpenError::WrongId { which: "chunk id" });
        }
        (SealedId::Record { entry: we, .. }, SealedId::Record { entry: ge, .. }) if we != ge => {
            return Err(OpenError::WrongId { which: "entry key" });
        }
        (SealedId::Record { version: wv, .. }, SealedId::Record { version: gv, .. })
            if wv != gv =>
        {
            return Err(OpenError::WrongId {
                which: "version id",
            });
        }
        _ => {}
    }
    let Some(keys) = ring.epoch(h.epoch) else {
        return Err(OpenError::UnknownEpoch(h.epoch.0));
    };
    let (key, check) = match expected_kind {
        ObjectKind::Record => (&keys.record_seal_key, &keys.record_key_check),
        _ => (&keys.chunk_seal_key, &keys.chunk_key_check),
    };
    if !ct_eq(check, &h.key_check) {
        return Err(OpenError::WrongKey);
    }

    let header_len = h.header_len();
    let body_len = h.body_len as usize;
    let (aad, rest) = sealed.split_at(header_len);
    let (ciphertext, tag) = rest.split_at(body_len);
    out.clear();
    out.extend_from_slice(ciphertext);
    let aad = padded_aad(aad);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&h.nonce),
            &aad,
            out,
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError::Tampered)?;

    // Inner header.
    let flags = out.first().copied().unwrap_or(0);
    let stored = u32::from_be_bytes(array(out, 1)) as usize;
    let original = u32::from_be_bytes(array(out, 5)) as usize;
    if flags & !FLAG_ZSTD != 0 {
        return Err(OpenError::Malformed("unknown flags in the inner header"));
    }
    if stored > body_len - INNER_HEADER_LEN {
        return Err(OpenError::Malformed(
            "stored content length exceeds the body",
        ));
    }
    if padded(INNER_HEADER_LEN + stored) != body_len {
        return Err(OpenError::Malformed(
            "body length is not the padded length of the content",
        ));
    }
    let content_end = INNER_HEADER_LEN + stored;
    if out
        .get(content_end..)
        .is_some_and(|pad| pad.iter().any(|b| *b != 0))
    {
        return Err(OpenError::Malformed("padding is not zero"));
    }
    if original > MAX_PLAINTEXT_LEN {
        return Err(OpenError::Malformed(
            "original length exceeds the 64 MiB plaintext limit",
        ));
    }
    if flags & FLAG_ZSTD == 0 {
        if original != stored {
            return Err(OpenError::Malformed(
                "original length differs from the stored length of uncompressed content",
            ));
        }
        out.copy_within(INNER_HEADER_LEN..content_end, 0);
        out.truncate(stored);
    } else {
        let content = out.get(INNER_HEADER_LEN..content_end).unwrap_or(&[]);
        let plain = decompress_exact(content, original)?;
        *out = plain;
    }
    Ok(())
}

impl Keyring {
    /// Opens a sealed chunk and checks that its content hashes to `expected`.
    pub fn open_chunk(&self, expected: &ChunkId, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::new();
        self.open_chunk_into(expected, sealed, &mut out)?;
        Ok(out)
    }

    /// Like [`Keyring::open_chunk`], writing the plaintext into `out` (cleared first, its
    /// allocation reused). On error `out` holds no plaintext of a failed check.
    pub fn open_chunk_into(
        &self,
        expected: &ChunkId,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let r = open_into(
            self,
            ObjectKind::Chunk,
            &SealedId::Chunk(*expected),
            sealed,
            out,
        )
        .and_then(|()| {
            if self.identity().chunk_id(out) == *expected {
                Ok(())
            } else {
                Err(OpenError::ContentMismatch)
            }
        });
        if r.is_err() {
            out.clear();
        }
        r
    }

    /// Opens a sealed record of `entry` at `version`.
    pub fn open_record(
        &self,
        entry: &EntryKey,
        version: &VersionId,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::new();
        open_into(
            self,
            ObjectKind::Record,
            &SealedId::Record {
                entry: *entry,
                version: *version,
            },
            sealed,
            &mut out,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

use proptest::prelude::*;

use super::*;
use crate::keys::VaultIdentityKeys;
use crate::keys::VaultKey;

const VAULT: VaultId = VaultId([0x11; 16]);

fn ring_with(vault: VaultId, epochs: &[(u32, u8)]) -> Keyring {
    let first = VaultKey::from_bytes([epochs[0].1; 32]);
    let mut ring = Keyring::new(vault, VaultIdentityKeys::derive(vault, &first));
    for &(e, k) in epochs {
        ring.insert_epoch(EpochKeys::derive(
            vault,
            Epoch(e),
            &VaultKey::from_bytes([k; 32]),
        ))
        .unwrap();
    }
    ring
}

fn ring() -> Keyring {
    ring_with(VAULT, &[(0, 1), (1, 2)])
}

/// Deterministic incompressible bytes (splitmix64).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic text-like bytes: words from a small vocabulary, compressible.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ", "sync ", "vault ", "chunk ", "sealed ", "record ", "device ", "epoch ", "key ",
        "of ", "and ", "a ", "is ", "to ", "file\n", "dooz ",
    ];
    let r = random_bytes(len / 2 + 8, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[usize::from(r[i % r.len()] & 15)].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn body_len_of(sealed: &[u8]) -> usize {
    SealedHeader::parse_chunk(sealed).unwrap().body_len as usize
}

fn inner_flags(ring: &Keyring, sealed: &[u8]) -> u8 {
    // Decrypt without the inner checks to look at the flags.
    let h = SealedHeader::parse_chunk(sealed).unwrap();
    let keys = ring.epoch(h.epoch).unwrap();
    let mut body = sealed[CHUNK_HEADER_LEN..sealed.len() - TAG_LEN].to_vec();
    XChaCha20Poly1305::new(Key::from_slice(&keys.chunk_seal_key))
        .decrypt_in_place_detached(
            XNonce::from_slice(&h.nonce),
            &padded_aad(&sealed[..CHUNK_HEADER_LEN]),
            &mut body,
            Tag::from_slice(&sealed[sealed.len() - TAG_LEN..]),
        )
        .unwrap();
    body[0]
}

fn round_trip(ring: &Keyring, data: &[u8], out: &mut Vec<u8>) {
    let id = ring.identity().chunk_id(data);
    let keys = ring.latest().unwrap();
    keys.seal_chunk_into(&id, data, out).unwrap();
    let body = body_len_of(out);
    assert_eq!(out.len(), CHUNK_HEADER_LEN + body + TAG_LEN);
    assert!(
        out.len() <= max_sealed_chunk_len(data.len()),
        "len {}",
        data.len()
    );
    assert_eq!(padded(body), body);
    let opened = ring.open_chunk(&id, out).unwrap();
    assert!(opened == data, "round trip of {} bytes", data.len());
}

#[test]
fn round_trip_every_size_to_4096() {
    let ring = ring();
    let random = random_bytes(4096, 1);
    let text = text_bytes(4096, 2);
    let mut out = Vec::new();
    for n in 0..=4096 {
        round_trip(&ring, &random[..n], &mut out);
        // Incompressible data is never compressed: the body is exactly the padded length.
        assert_eq!(body_len_of(&out), padded(INNER_HEADER_LEN + n), "len {n}");
        round_trip(&ring, &text[..n], &mut out);
        if n < MIN_COMPRESS_LEN {
            assert_eq!(body_len_of(&out), padded(INNER_HEADER_LEN + n), "len {n}");
        }
    }
    // Text of a few hundred bytes and more is compressed.
    let id = ring.identity().chunk_id(&text);
    let sealed = ring.latest().unwrap().seal_chunk(&id, &text).unwrap();
    assert_eq!(inner_flags(&ring, &sealed), FLAG_ZSTD);
    assert!(sealed.len() < text.len() / 2);
}

/// Plaintext sizes around PADME boundaries and powers of two, up to 8 MiB. All boundaries up to
/// 64 KiB; above, the powers of two and the first, middle and last boundary of each octave.
fn boundary_sizes() -> Vec<usize> {
    let mut sizes = Vec::new();
    let max = 8 << 20;
    let mut push_around = |inner: usize| {
        for d in [-1i64, 0, 1] {
            let n = inner as i64 - INNER_HEADER_LEN as i64 + d;
            if (0..=max as i64).contains(&n) {
                sizes.push(n as usize);
            }
        }
    };
    let mut p = MIN_BODY_LEN;
    while p <= max + INNER_HEADER_LEN {
        // Next PADME length after p.
        let next = padded(p + 1);
        let octave = usize::BITS - 1 - p.leading_zeros();
        let step = next - p;
        let within = (p - (1 << octave)) / step.max(1);
        if p <= 64 << 10 || p.is_power_of_two() || within == 1 || within == 15 {
            push_around(p);
        }
        p = next;
    }
    for shift in 0..=23 {
        push_around((1usize << shift) + INNER_HEADER_LEN);
        push_around(1usize << shift);
    }
    // A few odd sizes.
    sizes.extend([5_000, 65_537, 100_003, 1_000_000, 3_333_333, max]);
    sizes.retain(|n| *n > 4096);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

#[test]
fn round_trip_around_boundaries_to_8_mib() {
    let ring = ring();
    let sizes = boundary_sizes();
    let max = *sizes.last().unwrap();
    let random = random_bytes(max, 3);
    let text = text_bytes(max, 4);
    let mut out = Vec::new();
    for &n in &sizes {
        round_trip(&ring, &random[..n], &mut out);
        assert_eq!(body_len_of(&out), padded(INNER_HEADER_LEN + n), "len {n}");
    }
    // Compressible data: every fourth size (zstd is the slow part).
    for &n in sizes.iter().step_by(4) {
        round_trip(&ring, &text[..n], &mut out);
        assert_eq!(inner_flags(&ring, &out), FLAG_ZSTD, "len {n}");
    }
    assert!(sizes.len() > 150, "{} sizes", sizes.len());
}

#[test]
fn largest_plaintext_seals_and_one_more_byte_is_refused() {
    let ring = ring();
    let keys = ring.latest().unwrap();
    let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
    let id = ring.identity().chunk_id(&big);
    assert_eq!(
        keys.seal_chunk(&id, &big),
        Err(SealError::TooLarge {
            len: MAX_PLAINTEXT_LEN + 1,
            max: MAX_PLAINTEXT_LEN
        })
    );
    let max = &big[..MAX_PLAINTEXT_LEN];
    let id = ring.identity().chunk_id(max);
    let sealed = keys.seal_chunk(&id, max).unwrap();
    assert_eq!(ring.open_chunk(&id, &sealed).unwrap(), max);
    let entry = ring.identity().entry_key(b"big");
    assert!(matches!(
        keys.seal_record(&entry, &VersionId([0; 16]), &big),
        Err(SealError::TooLarge { .. })
    ));
}

#[test]
fn compression_decision() {
    // Incompressible: skipped by the estimate alone.
    assert!(!worth_compressing(&random_bytes(65_536, 5)));
    assert!(!worth_compressing(&random_bytes(1_000, 5)));
    assert!(sampled_entropy(&random_bytes(65_536, 5)) > 7.7);
    // Text, zeros, and short inputs.
    assert!(worth_compressing(&text_bytes(65_536, 6)));
    assert!(worth_compressing(&[0u8; 200]));
    assert!(!worth_compressing(&[0u8; MIN_COMPRESS_LEN - 1]));
    assert_eq!(sampled_entropy(&[]), 0.0);
    assert_eq!(sampled_entropy(&[7; 10_000]), 0.0);
    // Random data with text at the end: the samples see both halves.
    let mut mixed = text_bytes(40_000, 7);
    mixed.extend(random_bytes(40_000, 8));
    let e = sampled_entropy(&mixed);
    assert!(e > 4.0 && e < 7.2, "{e}");
    // Compressible by the estimate, but zstd does not shrink the padded size: stored as is.
    let ring = ring();
    let four_bits: Vec<u8> = random_bytes(300, 9).iter().map(|b| b & 0x0f).collect();
    let id = ring.identity().chunk_id(&four_bits);
    let sealed = ring.latest().unwrap().seal_chunk(&id, &four_bits).unwrap();
    let flags = inner_flags(&ring, &sealed);
    let body = body_len_of(&sealed);
    if flags == 0 {
        assert_eq!(body, padded(INNER_HEADER_LEN + 300));
    } else {
        assert!(body < padded(INNER_HEADER_LEN + 300));
    }
    assert_eq!(ring.open_chunk(&id, &sealed).unwrap(), four_bits);
}

/// Hex digits: 4 bits per byte, compressible.
fn hex_bytes(len: usize, seed: u64) -> Vec<u8> {
    random_bytes(len, seed)
        .iter()
        .map(|b| b"0123456789abcdef"[usize::from(b & 15)])
        .collect()
}

#[test]
fn the_small_sample_still_tells_compressible_from_random() {
    let ring = ring();
    let keys = ring.latest().unwrap();
    let mut out = Vec::new();
    for len in [
        MIN_COMPRESS_LEN,
        200,
        SAMPLE_LEN - 1,
        SAMPLE_LEN,
        SAMPLE_LEN + 1,
        1_000,
        8_192,
        16_384,
        22_222,
        65_536,
        300_000,
    ] {
        // Random bytes skip zstd on the estimate alone from a few hundred bytes on. (Below,
        // the estimate of a random input is near the threshold, and a failed compression
        // attempt on so few bytes costs little.)
        if len >= 300 {
            let random = random_bytes(len, len as u64);
            let e = sampled_entropy(&random);
            assert!(e > ENTROPY_SKIP_BITS + 0.3, "random, {len} bytes: {e}");
            assert!(!worth_compressing(&random), "random, {len} bytes");
        }
        // Text, hex digits, zeros and text with random bytes after it are tried with zstd,
        // and from 1000 bytes on they are stored compressed.
        let mut half = text_bytes(len / 2, 3);
        half.extend(random_bytes(len - len / 2, 4));
        for (what, data) in [
            ("text", text_bytes(len, len as u64)),
            ("hex", hex_bytes(len, len as u64)),
            ("zeros", vec![0; len]),
            ("half text, half random", half),
        ] {
            let e = sampled_entropy(&data);
            assert!(e < ENTROPY_SKIP_BITS - 0.3, "{what}, {len} bytes: {e}");
            assert!(worth_compressing(&data), "{what}, {len} bytes");
            if len >= 1_000 {
                let id = ring.identity().chunk_id(&data);
                keys.seal_chunk_into(&id, &data, &mut out).unwrap();
                assert_eq!(inner_flags(&ring, &out), FLAG_ZSTD, "{what}, {len} bytes");
                assert_eq!(ring.open_chunk(&id, &out).unwrap(), data);
            }
        }
    }
    // Many random chunks: none comes near the threshold (512 samples give 7.90 ± 0.04 bits).
    let lowest = (0..300)
        .map(|seed| sampled_entropy(&random_bytes(4_096, seed)))
        .fold(f64::INFINITY, f64::min);
    assert!(lowest > 7.6, "{lowest}");
}

#[test]
fn seal_into_reuses_and_matches_seal() {
    let ring = ring();
    let keys = ring.latest().unwrap();
    let mut out = vec![0xEE; 1 << 20];
    let data = random_bytes(70_000, 10);
    let id = ring.identity().chunk_id(&data);
    keys.seal_chunk_with_nonce(&id, &data, &[9; 24], &mut out)
        .unwrap();
    let mut fresh = Vec::new();
    keys.seal_chunk_with_nonce(&id, &data, &[9; 24], &mut fresh)
        .unwrap();
    assert_eq!(out, fresh);
    // Random nonces: two seals differ but both open.
    let a = keys.seal_chunk(&id, &data).unwrap();
    let b = keys.seal_chunk(&id, &data).unwrap();
    assert_ne!(a, b);
    assert_eq!(ring.open_chunk(&id, &b).unwrap(), data);
    let mut opened = vec![1, 2, 3];
    ring.open_chunk_into(&id, &a, &mut opened).unwrap();
    assert_eq!(opened, data);
}

#[test]
fn header_parses_without_keys() {
    let ring = ring();
    let keys = ring.latest().unwrap();
    let data = b"header test".to_vec();
    let id = ring.identity().chunk_id(&data);
    let sealed = keys.seal_chunk(&id, &data).unwrap();
    let h = SealedHeader::parse_chunk(&sealed).unwrap();
    assert_eq!(h.kind, ObjectKind::Chunk);
    assert_eq!(h.vault, VAULT);
    assert_eq!(h.epoch, Epoch(1));
    assert_eq!(h.id, SealedId::Chunk(id));
    assert_eq!(h.key_check, keys.chunk_key_check());
    assert_eq!(h.sealed_len(), sealed.len());
    // Works on a prefix followed by other bytes (a pack).
    let mut pack = sealed.clone();
    pack.extend_from_slice(&sealed);
    assert_eq!(
        SealedHeader::parse_chunk(&pack).unwrap().sealed_len(),
        sealed.len()
    );

    let entry = ring.identity().entry_key(b"a/b");
    let version = VersionId([3; 16]);
    let rec = keys.seal_record(&entry, &version, b"record").unwrap();
    let h = SealedHeader::parse_record(&rec).unwrap();
    assert_eq!(h.id, SealedId::Record { entry, version });
    assert_eq!(h.key_check, keys.record_key_check());
    assert_eq!(h.header_len(), RECORD_HEADER_LEN);
    assert_eq!(h.sealed_len(), rec.len());
}

// ---------------------------------------------------------------------------------------------
// Each way a sealed chunk can be wrong gives its own error.

fn sample_chunk(ring: &Keyring) -> (ChunkId, Vec<u8>) {
    let data = text_bytes(1000, 11);
    let id = ring.identity().chunk_id(&data);
    (id, ring.latest().unwrap().seal_chunk(&id, &data).unwrap())
}

#[test]
fn every_truncation_is_truncated() {
    let ring = ring();
    let (id, sealed) = sample_chunk(&ring);
    for cut in 0..sealed.len() {
        let err = ring.open_chunk(&id, &sealed[..cut]).unwrap_err();
        let needed = if cut < CHUNK_HEADER_LEN {
            CHUNK_HEADER_LEN
        } else {
            sealed.len()
        };
        assert_eq!(err, OpenError::Truncated { needed, got: cut }, "cut {cut}");
    }
    let mut long = sealed.clone();
    long.push(0);
    assert_eq!(
        ring.open_chunk(&id, &long).unwrap_err(),
        OpenError::TrailingBytes {
            expected: sealed.len(),
            got: sealed.len() + 1
        }
    );
    // Records too.
    let entry = ring.identity().entry_key(b"x");
    let version = VersionId([1; 16]);
    let rec = ring
        .latest()
        .unwrap()
        .seal_record(&entry, &version, b"rec")
        .unwrap();
    for cut in 0..rec.len() {
        assert!(
            matches!(
                ring.open_record(&entry, &version, &rec[..cut]),
                Err(OpenError::Truncated { got, .. }) if got == cut
            ),
            "cut {cut}"
        );
    }
}

#[test]
fn each_header_field_flip_has_its_own_error() {
    let ring = ring();
    let (id, sealed) = sample_chunk(&ring);
    let body_end = sealed.len() - TAG_LEN;
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        let err = ring.open_chunk(&id, &bad).unwrap_err();
        let ok = match i {
            OFF_VERSION => err == OpenError::UnknownVersion(crate::FORMAT_VERSION ^ 1),
            OFF_KIND => {
                err == OpenError::WrongKind {
                    expected: ObjectKind::Chunk,
                    found: 0,
                }
            }
            OFF_VAULT..OFF_EPOCH => matches!(err, OpenError::WrongVault { .. }),
            // Epoch 1 becomes 0 (held, other key) or an epoch the ring lacks.
            OFF_EPOCH..OFF_BODY_LEN => {
                err == OpenError::WrongKey || matches!(err, OpenError::UnknownEpoch(_))
            }
            OFF_BODY_LEN..OFF_KEY_CHECK => matches!(
                err,
                OpenError::Truncated { .. }
                    | OpenError::TrailingBytes { .. }
                    | OpenError::Malformed(_)
            ),
            OFF_KEY_CHECK..OFF_NONCE => err == OpenError::WrongKey,
            OFF_NONCE..OFF_ID => err == OpenError::Tampered,
            OFF_ID..CHUNK_HEADER_LEN => err == OpenError::WrongId { which: "chunk id" },
            _ if i < body_end => err == OpenError::Tampered,
            _ => err == OpenError::Tampered,
        };
        assert!(ok, "byte {i}: {err:?}");
    }
    // The epoch flips: 1 -> 0 is a held epoch with another key; others are unknown.
    let mut bad = sealed.clone();
    bad[OFF_EPOCH + 3] = 0;
    assert_eq!(ring.open_chunk(&id, &bad).unwrap_err(), OpenError::WrongKey);
    bad[OFF_EPOCH + 3] = 7;
    assert_eq!(
        ring.open_chunk(&id, &bad).unwrap_err(),
        OpenError::UnknownEpoch(7)
    );
}

#[test]
fn record_field_flips_have_their_own_errors() {
    let ring = ring();
    let keys = ring.latest().unwrap();
    let entry = ring.identity().entry_key(b"notes/today.md");
    let version = VersionId([0x42; 16]);
    let rec = keys.seal_record(&entry, &version, b"a record").unwrap();
    assert_eq!(
        ring.open_record(&entry, &version, &rec).unwrap(),
        b"a record"
    );
    for i in 0..rec.len() {
        let mut bad = rec.clone();
        bad[i] ^= 0x80;
        let err = ring.open_record(&entry, &version, &bad).unwrap_err();
        let ok = match i {
            OFF_VERSION => matches!(err, OpenError::UnknownVersion(_)),
            OFF_KIND => matches!(err, OpenError::WrongKind { .. }),
            OFF_VAULT..OFF_EPOCH => matches!(err, OpenError::WrongVault { .. }),
            OFF_EPOCH..OFF_BODY_LEN => matches!(err, OpenError::UnknownEpoch(_)),
            OFF_BODY_LEN..OFF_KEY_CHECK => matches!(
                err,
                OpenError::Truncated { .. }
                    | OpenError::TrailingBytes { .. }
                    | OpenError::Malformed(_)
            ),
            OFF_KEY_CHECK..OFF_NONCE => err == OpenError::WrongKey,
            58..90 => err == OpenError::WrongId { which: "entry key" },
            90..RECORD_HEADER_LEN => {
                err == OpenError::WrongId {
                    which: "version id",
                }
            }
            _ => err == OpenError::Tampered,
        };
        assert!(ok, "byte {i}: {err:?}");
    }
    // Asking for another entry or version.
    let other = ring.identity().entry_key(b"notes/other.md");
    assert_eq!(
        ring.open_record(&other, &version, &rec).unwrap_err(),
        OpenError::WrongId { which: "entry key" }
    );
    assert_eq!(
        ring.open_record(&entry, &VersionId([0; 16]), &rec)
            .unwrap_err(),
        OpenError::WrongId {
            which: "version id"
        }
    );
}

#[test]
fn wrong_ring_id_epoch_kind_and_content() {
    let ring = ring();
    let (id, sealed) = sample_chunk(&ring);

    // Another vault.
    let other_vault = ring_with(VaultId([0x22; 16]), &[(0, 1), (1, 2)]);
    assert_eq!(
        other_vault.open_chunk(&id, &sealed).unwrap_err(),
        OpenError::WrongVault {
            expected: VaultId([0x22; 16]),
            found: VAULT
        }
    );
    // Another id.
    let other_id = ring.identity().chunk_id(b"other");
    assert_eq!(
        ring.open_chunk(&other_id, &sealed).unwrap_err(),
        OpenError::WrongId { which: "chunk id" }
    );
    // Unknown epoch: the ring lacks epoch 1.
    let old = ring_with(VAULT, &[(0, 1)]);
    assert_eq!(
        old.open_chunk(&id, &sealed).unwrap_err(),
        OpenError::UnknownEpoch(1)
    );
    // Wrong key: same vault and epoch, another key.
    let forked = ring_with(VAULT, &[(0, 1), (1, 3)]);
    assert_eq!(
        forked.open_chunk(&id, &sealed).unwrap_err(),
        OpenError::WrongKey
    );
    // Unknown version.
    let mut v2 = sealed.clone();
    v2[0] = 2;
    assert_eq!(
        ring.open_chunk(&id, &v2).unwrap_err(),
        OpenError::UnknownVersion(2)
    );
    // A record is not a chunk, and a chunk is not a record.
    let entry = ring.identity().entry_key(b"e");
    let version = VersionId([1; 16]);
    let rec = ring
        .latest()
        .unwrap()
        .seal_record(&entry, &version, &[0; 100])
        .unwrap();
    assert_eq!(
        ring.open_chunk(&id, &rec).unwrap_err(),
        OpenError::WrongKind {
            expected: ObjectKind::Chunk,
            found: 2
        }
    );
    assert_eq!(
        ring.open_record(&entry, &version, &sealed).unwrap_err(),
        OpenError::WrongKind {
            expected: ObjectKind::Record,
            found: 1
        }
    );
    assert!(
        ring.open_chunk(&id, &rec)
            .unwrap_err()
            .to_string()
            .contains("expected a sealed chunk, found a sealed record")
    );
    // Content that does not hash to its id (a sealer that lied about the id).
    let lie = ring
        .latest()
        .unwrap()
        .seal_chunk(&other_id, b"not other")
        .unwrap();
    assert_eq!(
        ring.open_chunk(&other_id, &lie).unwrap_err(),
        OpenError::ContentMismatch
    );
    let mut out = vec![1, 2, 3];
    assert!(ring.open_chunk_into(&other_id, &lie, &mut out).is_err());
    assert!(out.is_empty(), "no unverified plaintext is left behind");
}

/// Builds a sealed chunk around an arbitrary inner plaintext, correctly encrypted and
/// authenticated, to reach the checks behind the AEAD.
fn seal_raw_inner(ring: &Keyring, id: &ChunkId, inner: &[u8]) -> Vec<u8> {
    let keys = ring.latest().unwrap();
    let mut out = Vec::new();
    out.push(crate::FORMAT_VERSION);
    out.push(ObjectKind::Chunk.byte());
    out.extend_from_slice(&VAULT.0);
    out.extend_from_slice(&keys.epoch().0.to_be_bytes());
    out.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    out.extend_from_slice(&keys.chunk_key_check);
    out.extend_from_slice(&[5; NONCE_LEN]);
    out.extend_from_slice(id.as_bytes());
    let mut body = inner.to_vec();
    let tag = XChaCha20Poly1305::new(Key::from_slice(&keys.chunk_seal_key))
        .encrypt_in_place_detached(
            XNonce::from_slice(&[5; NONCE_LEN]),
            &padded_aad(&out),
            &mut body,
        )
        .unwrap();
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

fn inner(flags: u8, stored: u32, original: u32, content: &[u8], body_len: usize) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&stored.to_be_bytes());
    v.extend_from_slice(&original.to_be_bytes());
    v.extend_from_slice(content);
    v.resize(body_len, 0);
    v
}

#[test]
fn malformed_inner_plaintexts() {
    let ring = ring();
    let data = b"0123456789".to_vec();
    let id = ring.identity().chunk_id(&data);
    let body = padded(INNER_HEADER_LEN + data.len());
    // Well formed: opens (the helper itself is right).
    let good = seal_raw_inner(&ring, &id, &inner(0, 10, 10, &data, body));
    assert_eq!(ring.open_chunk(&id, &good).unwrap(), data);

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (inner(0x02, 10, 10, &data, body), "unknown flags"),
        (inner(0x80, 10, 10, &data, body), "unknown flags"),
        (inner(0, 100, 10, &data, body), "exceeds the body"),
        (inner(0, 5, 5, &data[..5], body), "not the padded length"),
        (inner(0, 10, 11, &data, body), "original length differs"),
        (
            {
                let mut v = inner(0, 10, 10, &data, body);
                v.push(0);
                v.resize(padded(v.len()), 0);
                v
            },
            "not the padded length",
        ),
        (
            inner(FLAG_ZSTD, 10, (MAX_PLAINTEXT_LEN + 1) as u32, &data, body),
            "exceeds the 64 MiB",
        ),
    ];
    for (inner_pt, want) in cases {
        let blob = seal_raw_inner(&ring, &id, &inner_pt);
        let err = ring.open_chunk(&id, &blob).unwrap_err();
        match err {
            OpenError::Malformed(msg) => assert!(msg.contains(want), "{msg} vs {want}"),
            other => panic!("expected Malformed({want}), got {other:?}"),
        }
    }
    // Non-zero padding (10 bytes: inner 19, padded to 20).
    assert_eq!(body, INNER_HEADER_LEN + data.len() + 1);
    let mut bad_pad = inner(0, 10, 10, &data, body);
    *bad_pad.last_mut().unwrap() = 1;
    assert_eq!(
        ring.open_chunk(&id, &seal_raw_inner(&ring, &id, &bad_pad))
            .unwrap_err(),
        OpenError::Malformed("padding is not zero")
    );

    // Declared body lengths a sealer never writes.
    for body_len in [0usize, 9, 11, padded(1 << 20) + 1] {
        let mut blob = good.clone();
        blob[OFF_BODY_LEN..OFF_KEY_CHECK].copy_from_slice(&(body_len as u32).to_be_bytes());
        assert!(
            matches!(ring.open_chunk(&id, &blob), Err(OpenError::Malformed(_))),
            "body {body_len}"
        );
    }
    let mut huge = good.clone();
    huge[OFF_BODY_LEN..OFF_KEY_CHECK].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        ring.open_chunk(&id, &huge),
        Err(OpenError::Malformed(m)) if m.contains("64 MiB")
    ));
}

#[test]
fn bad_compressed_content() {
    let ring = ring();
    let data = text_bytes(5000, 12);
    let id = ring.identity().chunk_id(&data);
    let frame = zstd::bulk::compress(&data, ZSTD_LEVEL).unwrap();
    let mk = |content: &[u8], original: usize| {
        let body = padded(INNER_HEADER_LEN + content.len());
        inner(
            FLAG_ZSTD,
            content.len() as u32,
            original as u32,
            content,
            body,
        )
    };
    // Correct: opens.
    let good = seal_raw_inner(&ring, &id, &mk(&frame, data.len()));
    assert_eq!(ring.open_chunk(&id, &good).unwrap(), data);
    // Garbage content.
    let blob = seal_raw_inner(&ring, &id, &mk(b"definitely not a zstd frame", 100));
    assert!(matches!(
        ring.open_chunk(&id, &blob),
        Err(OpenError::Decompress(_))
    ));
    // Declared original shorter than the content expands to: bounded, refused.
    let blob = seal_raw_inner(&ring, &id, &mk(&frame, data.len() - 1));
    assert!(matches!(
        ring.open_chunk(&id, &blob),
        Err(OpenError::Decompress(_))
    ));
    // Declared original longer.
    let blob = seal_raw_inner(&ring, &id, &mk(&frame, data.len() + 1));
    let err = ring.open_chunk(&id, &blob).unwrap_err();
    assert!(
        matches!(err, OpenError::Decompress(ref m) if m.contains("declares")),
        "{err}"
    );
    // A bomb: 10 MiB of zeros declared as 1 KiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 10 << 20], 3).unwrap();
    let blob = seal_raw_inner(&ring, &id, &mk(&bomb, 1024));
    assert!(matches!(
        ring.open_chunk(&id, &blob),
        Err(OpenError::Decompress(_))
    ));
    // Valid frame, wrong content for the id.
    let other = ring.identity().chunk_id(b"other");
    let blob = seal_raw_inner(&ring, &other, &mk(&frame, data.len()));
    assert_eq!(
        ring.open_chunk(&other, &blob).unwrap_err(),
        OpenError::ContentMismatch
    );
}

#[test]
fn error_messages_say_what_is_wrong() {
    let msgs = [
        OpenError::Truncated { needed: 90, got: 3 }.to_string(),
        OpenError::UnknownVersion(9).to_string(),
        OpenError::UnknownEpoch(4).to_string(),
        SealError::TooLarge { len: 1, max: 0 }.to_string(),
    ];
    assert!(msgs[0].contains("need 90 bytes, got 3"));
    assert!(msgs[1].contains("version 9") && msgs[1].contains("version 1"));
    assert!(msgs[2].contains("epoch 4"));
    assert!(msgs[3].contains("split"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let ring = ring();
        let id = ring.identity().chunk_id(b"x");
        let _ = ring.open_chunk(&id, &bytes);
        let _ = ring.open_record(&ring.identity().entry_key(b"x"), &VersionId([0; 16]), &bytes);
        let _ = SealedHeader::parse_chunk(&bytes);
        let _ = SealedHeader::parse_record(&bytes);
    }

    #[test]
    fn open_never_panics_on_valid_looking_headers(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        body_len in any::<u32>(),
        epoch in 0u32..3,
    ) {
        // A plausible header (right version, kind, vault, id, key check) with arbitrary rest.
        let ring = ring();
        let id = ring.identity().chunk_id(b"x");
        let keys = ring.epoch(Epoch(epoch.min(1))).unwrap();
        let mut blob = vec![crate::FORMAT_VERSION, ObjectKind::Chunk.byte()];
        blob.extend_from_slice(&VAULT.0);
        blob.extend_from_slice(&epoch.to_be_bytes());
        blob.extend_from_slice(&body_len.to_be_bytes());
        blob.extend_from_slice(&keys.chunk_key_check);
        blob.extend_from_slice(&[0; NONCE_LEN]);
        blob.extend_from_slice(id.as_bytes());
        blob.extend_from_slice(&tail);
        prop_assert!(ring.open_chunk(&id, &blob).is_err());
    }

    #[test]
    fn round_trip_any_plaintext(data in proptest::collection::vec(any::<u8>(), 0..3000), text in any::<bool>()) {
        let ring = ring();
        let data = if text { text_bytes(data.len(), u64::from(data.first().copied().unwrap_or(0))) } else { data };
        let id = ring.identity().chunk_id(&data);
        let keys = ring.latest().unwrap();
        let sealed = keys.seal_chunk(&id, &data).unwrap();
        prop_assert_eq!(ring.open_chunk(&id, &sealed).unwrap(), data.clone());
        let entry = ring.identity().entry_key(&data);
        let rec = keys.seal_record(&entry, &VersionId([2; 16]), &data).unwrap();
        prop_assert_eq!(ring.open_record(&entry, &VersionId([2; 16]), &rec).unwrap(), data);
    }

    #[test]
    fn any_single_flip_is_refused(pos in any::<usize>(), bit in 0u8..8, len in 0usize..2000) {
        let ring = ring();
        let data = text_bytes(len, 13);
        let id = ring.identity().chunk_id(&data);
        let mut sealed = ring.latest().unwrap().seal_chunk(&id, &data).unwrap();
        let at = pos % sealed.len();
        sealed[at] ^= 1 << bit;
        prop_assert!(ring.open_chunk(&id, &sealed).is_err());
    }
}

//! XChaCha20-Poly1305 encryption of a sealed body that reads the content from where it lies.
//!
//! `chacha20poly1305`'s AEAD encrypts a buffer in place, so the plaintext had to be copied into
//! the output first. This computes the same AEAD (the construction of
//! `chacha20poly1305::XChaCha20Poly1305`, from the `chacha20` and `poly1305` crates it is built
//! on) but encrypts the content straight from the caller's slice into the output. The sealed
//! bytes are identical; the test vectors in `docs/FORMAT.md` and the tests below check it
//! against the AEAD.

use chacha20::XChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use zeroize::Zeroize;

use super::{NONCE_LEN, TAG_LEN};

/// A ChaCha20 block; the Poly1305 key is the first half of block 0, the body starts at block 1.
const BLOCK_LEN: u64 = 64;
/// The body is encrypted and MACed a tile at a time, so Poly1305 reads ciphertext that is still
/// in L1 (source and destination of a tile take 8 KiB). A multiple of 64 (and so of
/// Poly1305's 16-byte blocks): only the last tile can end off a block boundary.
const TILE: usize = 4096;

/// The keystream would run past ChaCha20's 32-bit block counter (bodies are far smaller), or
/// `content` does not fit in the body.
#[derive(Debug)]
pub(super) struct Unencryptable;

/// Encrypts a body with XChaCha20-Poly1305 and returns the tag.
///
/// The body's plaintext is `body[..at]` as it stands, then `content`, then zero bytes to the
/// end of `body`; the ciphertext replaces `body` (so `body[at..]` may hold anything on entry).
/// `aad` is authenticated, not encrypted.
pub(super) fn encrypt_detached(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    body: &mut [u8],
    at: usize,
    content: &[u8],
) -> Result<[u8; TAG_LEN], Unencryptable> {
    let content_end = at.checked_add(content.len()).ok_or(Unencryptable)?;
    if content_end > body.len() {
        return Err(Unencryptable);
    }
    let mut cipher = XChaCha20::new(key.into(), nonce.into());
    // Poly1305 key: the first 32 bytes of keystream block 0.
    let mut mac_key = [0u8; 32];
    cipher.apply_keystream(&mut mac_key);
    let mut mac = Poly1305::new((&mac_key).into());
    mac_key.zeroize();
    cipher.try_seek(BLOCK_LEN).map_err(|_| Unencryptable)?;
    mac.update_padded(aad);

    let mut start = 0;
    for tile in body.chunks_mut(TILE) {
        let end = start + tile.len();
        // The parts of the plaintext that overlap this tile, as ranges within the tile: head
        // (encrypted in place), content (encrypted from `content`), zero padding.
        let part = |lo: usize, hi: usize| {
            let (lo, hi) = (lo.max(start), hi.min(end));
            (lo < hi).then(|| lo - start..hi - start)
        };
        if let Some(t) = part(0, at).and_then(|r| tile.get_mut(r)) {
            cipher.try_apply_keystream(t).map_err(|_| Unencryptable)?;
        }
        if let Some(r) = part(at, content_end) {
            let src = content.get(r.start + start - at..r.end + start - at);
            let (Some(src), Some(t)) = (src, tile.get_mut(r)) else {
                return Err(Unencryptable);
            };
            cipher
                .apply_keystream_b2b(src, t)
                .map_err(|_| Unencryptable)?;
        }
        if let Some(t) = part(content_end, end).and_then(|r| tile.get_mut(r)) {
            t.fill(0);
            cipher.try_apply_keystream(t).map_err(|_| Unencryptable)?;
        }
        mac.update_padded(tile);
        start = end;
    }

    let mut lengths = poly1305::Block::default();
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    mac.update(&[lengths]);
    Ok(mac.finalize().into())
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit as _};
    use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The reference: assemble the plaintext, encrypt it in place with the AEAD.
    fn reference(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        let tag = XChaCha20Poly1305::new(Key::from_slice(key))
            .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf)
            .unwrap();
        buf.extend_from_slice(&tag);
        buf
    }

    #[test]
    fn matches_the_aead_for_every_split() {
        let key = [7u8; 32];
        let nonce: [u8; 24] = std::array::from_fn(|i| i as u8);
        let aads = [bytes(0, 1), bytes(90, 2), bytes(128, 3), bytes(131, 4)];
        // Lengths around block (64) and Poly1305 (16) boundaries, and a few larger ones.
        let mut lens: Vec<usize> = (0..=200).collect();
        lens.extend([
            255,
            256,
            257,
            1023,
            1024,
            4096 + 9,
            16_384 + 9,
            65_536 + 9,
            70_001,
        ]);
        for (k, aad) in aads.iter().enumerate() {
            for &len in &lens {
                // The head is the 9-byte inner header when it fits; some padding follows.
                let at = 9.min(len);
                let pad = (len + k) % 23;
                let content_len = len - at - pad.min(len - at);
                let plain_content = bytes(content_len, 9);
                let mut plain = bytes(at, 5);
                plain.extend_from_slice(&plain_content);
                plain.resize(len, 0);
                let want = reference(&key, &nonce, aad, &plain);

                // Garbage where the content and padding go: they must be overwritten.
                let mut body = plain[..at].to_vec();
                body.resize(len, 0xAB);
                let tag =
                    encrypt_detached(&key, &nonce, aad, &mut body, at, &plain_content).unwrap();
                body.extend_from_slice(&tag);
                assert!(body == want, "aad {} len {len} at {at}", aad.len());
            }
        }
    }

    #[test]
    fn all_in_place_matches_the_aead() {
        let key = [9u8; 32];
        let nonce = [3u8; 24];
        let plain = bytes(5000, 8);
        let mut body = plain.clone();
        let tag = encrypt_detached(&key, &nonce, b"header", &mut body, plain.len(), &[]).unwrap();
        body.extend_from_slice(&tag);
        assert_eq!(body, reference(&key, &nonce, b"header", &plain));
    }
}

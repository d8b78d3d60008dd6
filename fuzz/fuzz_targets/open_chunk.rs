//! Opening sealed chunks: arbitrary bytes, and valid chunks with one byte
//! changed, never panic and never open to anything but the sealed plaintext.
#![no_main]

use dooz_crypto::{Epoch, EpochKeys, Keyring, VaultId, VaultIdentityKeys, VaultKey};
use libfuzzer_sys::fuzz_target;

fn keyring() -> Keyring {
    let vault = VaultId([7; 16]);
    let key = VaultKey::from_bytes([42; 32]);
    let mut ring = Keyring::new(vault, VaultIdentityKeys::derive(vault, &key));
    ring.insert_epoch(EpochKeys::derive(vault, Epoch(0), &key))
        .expect("same vault");
    ring
}

fuzz_target!(|data: &[u8]| {
    let ring = keyring();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw bytes as a sealed chunk.
        let id = ring.identity().chunk_id(b"some chunk");
        let _ = ring.open_chunk(&id, rest);
        return;
    }
    // Seal `plaintext`, flip one byte chosen by the input, open.
    if rest.len() < 3 {
        return;
    }
    let (pos, plaintext) = rest.split_at(2);
    let pos = usize::from(u16::from_le_bytes([pos[0], pos[1]]));
    let id = ring.identity().chunk_id(plaintext);
    let latest = ring.latest().expect("one epoch");
    let mut sealed = latest.seal_chunk(&id, plaintext).expect("small input seals");
    assert_eq!(ring.open_chunk(&id, &sealed).expect("fresh seal opens"), plaintext);
    let at = pos % sealed.len();
    sealed[at] ^= mode | 1;
    assert!(ring.open_chunk(&id, &sealed).is_err(), "tampered chunk opened");
});

//! Opening sealed records: arbitrary bytes, and valid records with one byte
//! changed or a truncated tail, never panic and never open.
#![no_main]

use dooz_crypto::{Epoch, EpochKeys, Keyring, VaultId, VaultIdentityKeys, VaultKey, VersionId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let vault = VaultId([9; 16]);
    let key = VaultKey::from_bytes([1; 32]);
    let mut ring = Keyring::new(vault, VaultIdentityKeys::derive(vault, &key));
    ring.insert_epoch(EpochKeys::derive(vault, Epoch(3), &key))
        .expect("same vault");
    let entry = ring.identity().entry_key(b"docs/readme.txt");
    let version = VersionId([5; 16]);

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = ring.open_record(&entry, &version, rest);
        return;
    }
    let latest = ring.latest().expect("one epoch");
    let mut sealed = latest
        .seal_record(&entry, &version, rest)
        .expect("small input seals");
    assert_eq!(ring.open_record(&entry, &version, &sealed).expect("opens"), rest);
    let cut = usize::from(mode >> 1) % sealed.len();
    if mode & 2 == 0 {
        sealed.truncate(cut);
    } else {
        sealed[cut] ^= 0x80;
    }
    assert!(ring.open_record(&entry, &version, &sealed).is_err());
});

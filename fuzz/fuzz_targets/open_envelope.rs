//! Opening device and recovery envelopes from arbitrary bytes never panics,
//! and a valid envelope with one byte changed never opens.
#![no_main]

use dooz_crypto::{
    DeviceSecretKeys, Epoch, RecoverySecret, VaultId, VaultKey, open_envelope,
    open_recovery_envelope, wrap_to_recovery, wrap_vault_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let recipient = DeviceSecretKeys::from_bytes(&[3; 64]);
    let sender = DeviceSecretKeys::from_bytes(&[4; 64]);
    let secret = RecoverySecret::from_bytes([8; 16]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let _ = open_envelope(&recipient, rest);
        }
        1 => {
            let _ = open_recovery_envelope(&secret, rest);
        }
        2 => {
            let key = VaultKey::from_bytes([6; 32]);
            let mut env =
                wrap_vault_key(&sender, &recipient.public(), VaultId([1; 16]), Epoch(2), &key)
                    .expect("wrap");
            let pos = rest.first().map_or(0, |b| usize::from(*b)) % env.len();
            env[pos] ^= 1;
            assert!(open_envelope(&recipient, &env).is_err());
        }
        _ => {
            let key = VaultKey::from_bytes([6; 32]);
            let mut env = wrap_to_recovery(&secret, VaultId([1; 16]), Epoch(2), &key).expect("wrap");
            let pos = rest.first().map_or(0, |b| usize::from(*b)) % env.len();
            env[pos] ^= 1;
            assert!(open_recovery_envelope(&secret, &env).is_err());
        }
    }
});

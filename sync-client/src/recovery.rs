//! Recovery: every vault key is also wrapped to the account's recovery secret (128 bits, shown
//! once as 12 BIP39 English words), so a user who loses every device loses no file.
//!
//! [`set_up_recovery`] makes the secret when the account's first vault is created (or on
//! demand), keeps it in the device's index so later vaults are wrapped too
//! ([`wrap_vault_to_recovery`]), and stores one recovery envelope per (vault, epoch) on the
//! server (`PutEnvelope` to [`RECOVERY_RECIPIENT`]). On a fresh, enrolled device,
//! [`recover`] reads the words, fetches the recovery envelopes of every vault of the account
//! and keeps the keys; a sync then restores the files. The server can neither open nor forge a
//! recovery envelope: the key that seals it derives from the secret.

use dooz_crypto::{
    Epoch, RecoverySecret, VaultId, VaultKey, open_recovery_envelope, wrap_to_recovery,
};
use dooz_protocol::{
    Extension, Extensions, GetEnvelopes, RECOVERY_ENVELOPES_TAG, RECOVERY_RECIPIENT, Request,
    Response,
};
use zeroize::Zeroizing;

use crate::index::{Index, IndexError};
use crate::net::{Connection, NetError};

/// Words in a recovery phrase.
pub const RECOVERY_WORDS: usize = 12;

/// Recovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The words are not a recovery phrase.
    #[error(
        "these are not the {RECOVERY_WORDS} recovery words ({0}): check each word against the \
         ones written down when the first vault was created, and type them again"
    )]
    BadPhrase(String),
    /// The phrase is valid but is not the account's: no envelope opens with it.
    #[error(
        "these recovery words are not the ones of this account's vault {0} (its keys do not \
         open with them): check the words, and that this device is enrolled in the right account"
    )]
    WrongSecret(VaultId),
    /// A recovery envelope is damaged or forged.
    #[error(
        "the recovery envelope of vault {vault} (epoch {epoch}) is damaged or forged: {source}"
    )]
    BadEnvelope {
        /// The vault.
        vault: VaultId,
        /// The epoch.
        epoch: u32,
        /// What was wrong.
        #[source]
        source: dooz_crypto::EnvelopeError,
    },
    /// The account has no vault with a recovery envelope.
    #[error(
        "the server holds no recovery envelope for this account: recovery was never set up \
         (`dooz recovery setup` on a device that has the vaults), or this device is enrolled in \
         another account"
    )]
    NothingToRecover,
    /// The network or the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Key material could not be made.
    #[error(transparent)]
    Crypto(#[from] dooz_crypto::CryptoError),
}

/// The 12 words of `secret`, separated by single spaces.
pub fn recovery_words(secret: &RecoverySecret) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    // 16 bytes are valid BIP39 entropy, so this does not fail.
    if let Ok(m) = bip39::Mnemonic::from_entropy(secret.expose_secret()) {
        for (i, w) in m.words().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(w);
        }
    }
    out
}

/// Reads recovery words (any case, any whitespace between them).
pub fn parse_recovery_words(text: &str) -> Result<RecoverySecret, RecoveryError> {
    let normal = Zeroizing::new(
        text.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let count = normal.split(' ').filter(|w| !w.is_empty()).count();
    if count != RECOVERY_WORDS {
        return Err(RecoveryError::BadPhrase(format!(
            "{count} words, not {RECOVERY_WORDS}"
        )));
    }
    let m = bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &normal).map_err(
        |e| match e {
            bip39::Error::UnknownWord(i) => {
                RecoveryError::BadPhrase(format!("word {} is not in the word list", i + 1))
            }
            bip39::Error::InvalidChecksum => {
                RecoveryError::BadPhrase("their checksum does not match: a word is wrong".into())
            }
            other => RecoveryError::BadPhrase(other.to_string()),
        },
    )?;
    let (entropy, len) = m.to_entropy_array();
    let bytes = <[u8; 16]>::try_from(entropy.get(..len).unwrap_or_default())
        .map_err(|_| RecoveryError::BadPhrase("they do not hold 128 bits".into()))?;
    Ok(RecoverySecret::from_bytes(bytes))
}

fn protocol_vault(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

/// Wraps one vault key to the recovery secret and stores the envelope on the server.
pub async fn wrap_vault_to_recovery(
    conn: &Connection,
    secret: &RecoverySecret,
    vault: VaultId,
    epoch: Epoch,
    key: &VaultKey,
) -> Result<(), RecoveryError> {
    let envelope = wrap_to_recovery(secret, vault, epoch, key)?;
    conn.put_envelope(
        protocol_vault(vault),
        dooz_protocol::Epoch::new(epoch.0),
        RECOVERY_RECIPIENT,
        envelope,
    )
    .await?;
    Ok(())
}

/// Makes the account's recovery secret if this device has none, keeps it in `index`, wraps
/// every key of every vault in `index` to it, and returns its words, to show once. With a
/// secret already there, wraps every key again (idempotent) and returns `None`.
pub async fn set_up_recovery(
    conn: &Connection,
    index: &Index,
) -> Result<Option<Zeroizing<String>>, RecoveryError> {
    let (secret, fresh) = match index.recovery_secret()? {
        Some(s) => (s, false),
        None => (RecoverySecret::generate()?, true),
    };
    for (_, vault) in index.vault_names()? {
        for (epoch, key) in index.vault_keys(vault)? {
            wrap_vault_to_recovery(conn, &secret, vault, epoch, &key).await?;
        }
    }
    if fresh {
        index.set_recovery_secret(&secret)?;
        Ok(Some(recovery_words(&secret)))
    } else {
        Ok(None)
    }
}

/// One vault regained by [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredVault {
    /// The vault.
    pub vault: VaultId,
    /// Its name on this device (`recovered-<first 8 characters of its id>` unless it had one).
    pub name: String,
    /// The epochs whose keys were regained.
    pub epochs: Vec<Epoch>,
}

/// Regains every vault of the account from its recovery envelopes, opened with `secret`, and
/// keeps the keys (and the secret) in `index`. Vaults are not bound to folders.
pub async fn recover(
    conn: &Connection,
    secret: &RecoverySecret,
    index: &Index,
) -> Result<Vec<RecoveredVault>, RecoveryError> {
    let mut out = Vec::new();
    for info in conn.list_vaults().await? {
        let vault = VaultId(*info.vault.as_bytes());
        let req = Request::GetEnvelopes(GetEnvelopes {
            vault: info.vault,
            ext: Extensions::new().with(Extension::critical(RECOVERY_ENVELOPES_TAG, Vec::new())),
        });
        let envelopes = match conn.request_answer(req).await? {
            Response::Envelopes(e) => e.envelopes,
            Response::Error(e) => {
                return Err(NetError::Server {
                    code: e.code,
                    message: e.message,
                }
                .into());
            }
            _ => Vec::new(),
        };
        let mut keys = Vec::new();
        for e in &envelopes {
            let epoch = e.epoch.get();
            let opened = open_recovery_envelope(secret, &e.envelope).map_err(|source| {
                if source == dooz_crypto::EnvelopeError::WrongKey {
                    RecoveryError::WrongSecret(vault)
                } else {
                    RecoveryError::BadEnvelope {
                        vault,
                        epoch,
                        source,
                    }
                }
            })?;
            if opened.vault != vault || opened.epoch.0 != epoch {
                return Err(RecoveryError::BadEnvelope {
                    vault,
                    epoch,
                    source: dooz_crypto::EnvelopeError::Tampered,
                });
            }
            keys.push((opened.epoch, opened.key));
        }
        if keys.is_empty() {
            continue;
        }
        for (epoch, key) in &keys {
            index.put_vault_key(vault, *epoch, key)?;
        }
        let name = match index.vault_names()?.into_iter().find(|(_, v)| *v == vault) {
            Some((name, _)) => name,
            None => {
                let name = format!("recovered-{}", &vault.to_string()[..8]);
                index.set_vault_name(&name, vault)?;
                name
            }
        };
        out.push(RecoveredVault {
            vault,
            name,
            epochs: keys.iter().map(|(e, _)| *e).collect(),
        });
    }
    if out.is_empty() {
        return Err(RecoveryError::NothingToRecover);
    }
    index.set_recovery_secret(secret)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_mistakes_are_caught() {
        let secret = RecoverySecret::generate().unwrap();
        let words = recovery_words(&secret);
        assert_eq!(words.split(' ').count(), RECOVERY_WORDS);
        let back = parse_recovery_words(&format!("  {}\n", words.to_uppercase())).unwrap();
        assert_eq!(back.expose_secret(), secret.expose_secret());

        let mut list: Vec<&str> = words.split(' ').collect();
        list.pop();
        let short = list.join(" ");
        assert!(matches!(
            parse_recovery_words(&short),
            Err(RecoveryError::BadPhrase(m)) if m.contains("11 words")
        ));
        list.push("notaword");
        assert!(matches!(
            parse_recovery_words(&list.join(" ")),
            Err(RecoveryError::BadPhrase(m)) if m.contains("word 12")
        ));
    }
}

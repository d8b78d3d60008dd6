//! Key rotation after a revocation: a new epoch key for a vault, wrapped only to the devices
//! that remain, so a revoked device cannot read what is written after it.
//!
//! The server marks every vault of the account when a device is revoked ([`rotations_due`]);
//! the next device online calls [`rotate_vault`] with the public keys of the devices it trusts
//! to remain (itself included implicitly). New data is sealed under the newest epoch (the
//! engine seals with the keyring's latest epoch); old data stays readable with the old keys.
//! Other devices pick the new key up with [`receive_keys`], accepting envelopes only from
//! devices they trust.
//!
//! Rotation protects what is written after it. It does not take back what the revoked device
//! already read or could read (old epochs), and the vault's identity keys (chunk ids, entry
//! keys, chunker seed) stay the same across epochs so dedup survives: a revoked device can
//! still tell whether a chunk it knows is in the vault (see `docs/SECURITY.md`).

use dooz_crypto::{
    DevicePublicKeys, DeviceSecretKeys, Epoch, VaultId, VaultKey, open_envelope, wrap_vault_key,
};
use dooz_protocol::{Extensions, ListVaults, Request, Response, rotation_due};

use crate::index::{Index, IndexError};
use crate::net::{Connection, NetError};
use crate::recovery::{RecoveryError, wrap_vault_to_recovery};

/// A rotation or key refresh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// This device holds no key of the vault, so it cannot rotate it.
    #[error("this device holds no key of vault {0}, so it cannot rotate it")]
    NoKey(VaultId),
    /// The network or the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Key material could not be made or wrapped.
    #[error(transparent)]
    Crypto(#[from] dooz_crypto::CryptoError),
    /// The new key could not be wrapped to the recovery secret.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

fn protocol_vault(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

/// The vaults of the account whose key the server says must be rotated.
pub async fn rotations_due(conn: &Connection) -> Result<Vec<VaultId>, NetError> {
    let req = Request::ListVaults(ListVaults {
        ext: Extensions::default(),
    });
    match conn.request_answer(req).await? {
        Response::Vaults(v) => Ok(rotation_due(&v.ext)
            .into_iter()
            .map(|v| VaultId(*v.as_bytes()))
            .collect()),
        Response::Error(e) => Err(NetError::Server {
            code: e.code,
            message: e.message,
        }),
        _ => Ok(Vec::new()),
    }
}

/// Makes a new epoch key for `vault`, wraps it to this device and to each of `remaining` (and
/// to the account's recovery secret if this device keeps it), stores the envelopes on the
/// server, then keeps the key in `index`. Returns the new epoch.
///
/// The envelopes go first: a crash before the key is kept loses nothing, this device's own
/// envelope brings it back ([`receive_keys`]).
pub async fn rotate_vault(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    remaining: &[DevicePublicKeys],
) -> Result<Epoch, RotationError> {
    let local = index.vault_keys(vault)?;
    let Some((local_latest, _)) = local.last() else {
        return Err(RotationError::NoKey(vault));
    };
    let server_latest = conn
        .list_vaults()
        .await?
        .into_iter()
        .find(|v| v.vault == protocol_vault(vault))
        .map_or(0, |v| v.latest_epoch.get());
    let epoch = Epoch(local_latest.0.max(server_latest).saturating_add(1));
    let key = VaultKey::generate()?;
    let mut recipients = vec![me.public()];
    recipients.extend(remaining.iter().filter(|r| **r != me.public()).copied());
    for r in &recipients {
        let envelope = wrap_vault_key(me, r, vault, epoch, &key)?;
        let device = dooz_protocol::DeviceId::from_bytes(*r.device_id().as_bytes());
        conn.put_envelope(
            protocol_vault(vault),
            dooz_protocol::Epoch::new(epoch.0),
            device,
            envelope,
        )
        .await?;
    }
    if let Some(secret) = index.recovery_secret()? {
        wrap_vault_to_recovery(conn, &secret, vault, epoch, &key).await?;
    }
    index.put_vault_key(vault, epoch, &key)?;
    Ok(epoch)
}

/// Fetches this device's envelopes of `vault` and keeps the keys of epochs it lacks, from
/// envelopes wrapped by this device or by one of `trusted`; others are ignored. Returns the
/// epochs gained.
pub async fn receive_keys(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    trusted: &[DevicePublicKeys],
) -> Result<Vec<Epoch>, RotationError> {
    let known: Vec<Epoch> = index
        .vault_keys(vault)?
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut gained = Vec::new();
    for e in conn.get_envelopes(protocol_vault(vault)).await? {
        let epoch = Epoch(e.epoch.get());
        if known.contains(&epoch) || gained.contains(&epoch) {
            continue;
        }
        let Ok(opened) = open_envelope(me, &e.envelope) else {
            continue;
        };
        let sender_ok = opened.sender == me.public() || trusted.contains(&opened.sender);
        if sender_ok && opened.vault == vault && opened.epoch == epoch {
            index.put_vault_key(vault, epoch, &opened.key)?;
            gained.push(epoch);
        } else {
            tracing::warn!(%vault, epoch = epoch.0, "ignored an envelope from an untrusted sender");
        }
    }
    Ok(gained)
}

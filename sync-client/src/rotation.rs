//! Key rotation after a revocation: a new epoch key for a vault, wrapped only to the devices
//! that remain, so a revoked device cannot read what is written after it.
//!
//! The server marks every vault of the account when a device is revoked ([`rotations_due`]).
//! [`maintain_keys`], which the `dooz` CLI runs before every sync, does the rest on whichever
//! device comes online first:
//!
//! 1. it stops trusting the devices the server says are revoked ([`Index::distrust_peer`]; the
//!    server can only shrink the trusted set this way, never grow it: devices are trusted only
//!    by pairing);
//! 2. it fetches envelopes of epochs it lacks, accepting only those wrapped by trusted devices
//!    ([`receive_keys`]), and wraps each key it gains to its own trusted devices, so a key
//!    reaches every device connected to the rotating one by pairing, even those the rotating
//!    device never paired with;
//! 3. for each vault marked due it calls [`rotate_vault`]: a new epoch key, wrapped to itself
//!    first as a claim the server accepts only as the vault's next epoch (two devices rotating
//!    at once cannot both make a key for one epoch; the loser gets the winner's key in step 2
//!    of a later run), then to its trusted devices and the recovery secret.
//!
//! New data is sealed under the newest epoch (the engine seals with the keyring's latest
//! epoch); old data stays readable with the old keys.
//!
//! Rotation protects what is written after it. It does not take back what the revoked device
//! already read or could read (old epochs), and the vault's identity keys (chunk ids, entry
//! keys, chunker seed) stay the same across epochs so dedup survives: a revoked device can
//! still tell whether a chunk it knows is in the vault (see `docs/SECURITY.md`).

use dooz_crypto::{
    DevicePublicKeys, DeviceSecretKeys, Epoch, VaultId, VaultKey, open_envelope, wrap_vault_key,
};
use dooz_protocol::{
    EnvelopeInfo, ErrorCode, Extensions, ListVaults, ROSTER_EPOCH, Request, Response,
    revoked_devices, rotation_due,
};

use crate::index::{Index, IndexError};
use crate::net::{Connection, NetError};
use crate::recovery::{RecoveryError, wrap_vault_to_recovery};
use crate::roster::{open_roster, seal_roster};

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
    /// Another device started the vault's next epoch first; its key arrives as an envelope
    /// ([`receive_keys`]) once that device or one it trusts wraps it to this device.
    #[error("another device rotated the key of vault {0} first")]
    EpochTaken(VaultId),
}

fn protocol_vault(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

/// The vaults of the account whose key the server says must be rotated.
pub async fn rotations_due(conn: &Connection) -> Result<Vec<VaultId>, NetError> {
    Ok(vaults_answer(conn).await?.map_or_else(Vec::new, |v| {
        rotation_due(&v.ext)
            .into_iter()
            .map(|v| VaultId(*v.as_bytes()))
            .collect()
    }))
}

/// The whole `Vaults` answer, extensions included (`None` for an answer of another kind).
async fn vaults_answer(conn: &Connection) -> Result<Option<dooz_protocol::Vaults>, NetError> {
    let req = Request::ListVaults(ListVaults {
        ext: Extensions::default(),
    });
    match conn.request_answer(req).await? {
        Response::Vaults(v) => Ok(Some(v)),
        Response::Error(e) => Err(NetError::Server {
            code: e.code,
            message: e.message,
        }),
        _ => Ok(None),
    }
}

/// Makes a new epoch key for `vault`, wraps it to this device and to each of `remaining` (and
/// to the account's recovery secret if this device keeps it), stores the envelopes on the
/// server, then keeps the key in `index`. Returns the new epoch.
///
/// This device's own envelope goes first and claims the epoch ([`Connection::start_epoch`]);
/// if another device claimed it first nothing else is stored and the call fails with
/// [`RotationError::EpochTaken`]. The envelopes go before the key is kept: a crash in between
/// loses nothing, this device's own envelope brings it back ([`receive_keys`]).
pub async fn rotate_vault(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    remaining: &[DevicePublicKeys],
) -> Result<Epoch, RotationError> {
    let server_latest = conn
        .list_vaults()
        .await?
        .into_iter()
        .find(|v| v.vault == protocol_vault(vault))
        .map_or(0, |v| v.latest_epoch.get());
    rotate_after(conn, me, index, vault, remaining, server_latest).await
}

/// [`rotate_vault`] to the epoch after `seen_latest`, the vault's newest epoch when the
/// rotation was decided on: if another device rotated since, the claim fails.
async fn rotate_after(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    remaining: &[DevicePublicKeys],
    seen_latest: u32,
) -> Result<Epoch, RotationError> {
    let local = index.vault_keys(vault)?;
    let Some((local_latest, _)) = local.last() else {
        return Err(RotationError::NoKey(vault));
    };
    let epoch = Epoch(local_latest.0.max(seen_latest).saturating_add(1));
    let key = VaultKey::generate()?;
    let own = wrap_vault_key(me, &me.public(), vault, epoch, &key)?;
    let my_id = dooz_protocol::DeviceId::from_bytes(*me.device_id().as_bytes());
    match conn
        .start_epoch(
            protocol_vault(vault),
            dooz_protocol::Epoch::new(epoch.0),
            my_id,
            own,
        )
        .await
    {
        Ok(()) => {}
        Err(NetError::Server {
            code: ErrorCode::Conflict { .. },
            ..
        }) => return Err(RotationError::EpochTaken(vault)),
        Err(e) => return Err(e.into()),
    }
    let recipients: Vec<DevicePublicKeys> = remaining
        .iter()
        .filter(|r| **r != me.public())
        .copied()
        .collect();
    for r in &recipients {
        let envelope = wrap_vault_key(me, r, vault, epoch, &key)?;
        put_or_skip(conn, vault, epoch, r, envelope).await?;
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
    let envelopes = conn.get_envelopes(protocol_vault(vault)).await?;
    accept_keys(me, index, vault, &envelopes, trusted)
}

/// [`receive_keys`] on envelopes fetched already.
fn accept_keys(
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    envelopes: &[EnvelopeInfo],
    trusted: &[DevicePublicKeys],
) -> Result<Vec<Epoch>, RotationError> {
    let known: Vec<Epoch> = index
        .vault_keys(vault)?
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut gained = Vec::new();
    for e in envelopes.iter().filter(|e| e.epoch != ROSTER_EPOCH) {
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

/// Takes into the trusted set the devices named by rosters (in `envelopes`) of trusted,
/// unrevoked senders. Returns how many devices it added.
fn accept_rosters(
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    envelopes: &[EnvelopeInfo],
    revoked: &[dooz_crypto::DeviceId],
) -> Result<usize, RotationError> {
    let mut added = 0;
    let my_id = me.device_id();
    for e in envelopes.iter().filter(|e| e.epoch == ROSTER_EPOCH) {
        let trusted = index.trusted_peers()?;
        let sender_id = dooz_crypto::DeviceId::from_bytes(*e.sender.as_bytes());
        let Some(sender) = trusted.iter().find(|p| p.device_id() == sender_id) else {
            continue;
        };
        let devices = match open_roster(sender, vault, &my_id, &e.envelope) {
            Ok(devices) => devices,
            Err(err) => {
                tracing::warn!(%vault, sender = %sender_id, error = %err, "ignored a roster");
                continue;
            }
        };
        for d in devices {
            let id = d.device_id();
            if d != me.public() && !revoked.contains(&id) && !trusted.contains(&d) {
                index.trust_peer(&d)?;
                added += 1;
            }
        }
    }
    Ok(added)
}

/// Stores this device's roster (the devices it trusts) for each trusted device, in every
/// vault this device holds a key of, so that devices that trust this one come to trust the
/// devices paired through it ([`crate::roster`]).
pub async fn publish_roster(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
) -> Result<(), RotationError> {
    let trusted = index.trusted_peers()?;
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut vaults: Vec<VaultId> = index.vault_names()?.into_iter().map(|(_, v)| v).collect();
    vaults.sort_unstable_by_key(|v| v.0);
    vaults.dedup();
    for vault in vaults {
        if index.vault_keys(vault)?.is_empty() {
            continue;
        }
        for peer in &trusted {
            let id = peer.device_id();
            let others: Vec<DevicePublicKeys> =
                trusted.iter().filter(|p| *p != peer).copied().collect();
            let roster = seal_roster(me, vault, &id, &others, issued_at);
            conn.put_envelope(
                protocol_vault(vault),
                ROSTER_EPOCH,
                dooz_protocol::DeviceId::from_bytes(*id.as_bytes()),
                roster,
            )
            .await?;
        }
    }
    Ok(())
}

/// What [`maintain_keys`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyReport {
    /// Vaults this device rotated, with their new epoch.
    pub rotated: Vec<(VaultId, Epoch)>,
    /// Epoch keys this device received from trusted devices.
    pub received: Vec<(VaultId, Epoch)>,
    /// Devices this device stopped trusting because the server says they were revoked.
    pub distrusted: usize,
    /// Devices this device came to trust through the rosters of devices it trusts.
    pub trusted_added: usize,
    /// Vaults whose rotation another device claimed first.
    pub taken: Vec<VaultId>,
}

impl KeyReport {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.rotated.is_empty()
            && self.received.is_empty()
            && self.distrusted == 0
            && self.trusted_added == 0
            && self.taken.is_empty()
    }
}

/// Keeps this device's vault keys current (see the module docs): drops revoked devices from
/// the trusted set, takes new epoch keys from trusted devices and passes them on to its own
/// trusted devices, and rotates every vault the server marks due that this device holds a
/// key of. Idempotent; cheap when nothing changed (one `ListVaults`, one `GetEnvelopes` per
/// vault).
pub async fn maintain_keys(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
) -> Result<KeyReport, RotationError> {
    let Some(answer) = vaults_answer(conn).await? else {
        return Ok(KeyReport::default());
    };
    let mut report = KeyReport::default();
    // Revoked devices go first, so that their rosters are not taken below.
    let revoked: Vec<dooz_crypto::DeviceId> = revoked_devices(&answer.ext)
        .into_iter()
        .map(|d| dooz_crypto::DeviceId::from_bytes(*d.as_bytes()))
        .collect();
    for id in &revoked {
        if index.distrust_peer(id)? {
            report.distrusted += 1;
        }
    }
    let due: Vec<VaultId> = rotation_due(&answer.ext)
        .into_iter()
        .map(|v| VaultId(*v.as_bytes()))
        .collect();
    for info in &answer.vaults {
        let vault = VaultId(*info.vault.as_bytes());
        if index.vault_keys(vault)?.is_empty() {
            continue;
        }
        let envelopes = conn.get_envelopes(info.vault).await?;
        report.trusted_added += accept_rosters(me, index, vault, &envelopes, &revoked)?;
        let trusted = index.trusted_peers()?;
        for epoch in accept_keys(me, index, vault, &envelopes, &trusted)? {
            pass_on(conn, me, index, vault, epoch, &trusted).await?;
            report.received.push((vault, epoch));
        }
        if due.contains(&vault) {
            let seen = info.latest_epoch.get();
            match rotate_after(conn, me, index, vault, &trusted, seen).await {
                Ok(epoch) => report.rotated.push((vault, epoch)),
                Err(RotationError::EpochTaken(v)) => report.taken.push(v),
                Err(e) => return Err(e),
            }
        }
    }
    if report.trusted_added > 0 || report.distrusted > 0 {
        publish_roster(conn, me, index).await?;
    }
    Ok(report)
}

/// Wraps the key of `epoch` of `vault` (just received) to every trusted device.
async fn pass_on(
    conn: &Connection,
    me: &DeviceSecretKeys,
    index: &Index,
    vault: VaultId,
    epoch: Epoch,
    trusted: &[DevicePublicKeys],
) -> Result<(), RotationError> {
    let Some((_, key)) = index
        .vault_keys(vault)?
        .into_iter()
        .find(|(e, _)| *e == epoch)
    else {
        return Ok(());
    };
    for peer in trusted.iter().filter(|p| **p != me.public()) {
        let envelope = wrap_vault_key(me, peer, vault, epoch, &key)?;
        put_or_skip(conn, vault, epoch, peer, envelope).await?;
    }
    Ok(())
}

/// Stores an envelope for `peer`; a peer the server no longer knows as a device of the account
/// (revoked since this device last heard, or gone) is skipped: it gets no key.
async fn put_or_skip(
    conn: &Connection,
    vault: VaultId,
    epoch: Epoch,
    peer: &DevicePublicKeys,
    envelope: Vec<u8>,
) -> Result<(), RotationError> {
    let device = dooz_protocol::DeviceId::from_bytes(*peer.device_id().as_bytes());
    match conn
        .put_envelope(
            protocol_vault(vault),
            dooz_protocol::Epoch::new(epoch.0),
            device,
            envelope,
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(NetError::Server {
            code: ErrorCode::NotFound,
            message,
        }) => {
            tracing::warn!(%vault, epoch = epoch.0, %message, "a trusted device is not wrapped to");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

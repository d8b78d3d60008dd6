//! Key rotation after a revocation. The server cannot rotate (it holds no vault key); it only
//! tells the account's devices what they need to rotate safely, in the `Vaults` answer:
//!
//! - [`ROTATION_DUE_TAG`](dooz_protocol::ROTATION_DUE_TAG): the vaults whose key must be
//!   rotated. The store marks every vault of the account in the transaction that revokes a
//!   device ([`MetaStore::rotations_due`]), so the marks survive restarts; an envelope of an
//!   epoch newer than the vault's newest epoch at the revocation ends the mark.
//! - [`REVOKED_DEVICES_TAG`](dooz_protocol::REVOKED_DEVICES_TAG): the account's revoked
//!   devices, which devices stop trusting.
//!
//! A device starts the new epoch with a `PutEnvelope` carrying the critical
//! [`NEW_EPOCH_TAG`](dooz_protocol::NEW_EPOCH_TAG) ([`is_new_epoch`]); the store accepts it only
//! as the vault's next epoch ([`MetaStore::start_epoch`]), so two devices rotating at once
//! cannot both make a key for one epoch: the second gets `Conflict` and fetches the first's
//! key instead.

use dooz_protocol::{
    Message, NEW_EPOCH_TAG, PutEnvelope, Response, revoked_devices_extension,
    rotation_due_extension,
};

use crate::store::{AccountId, MetaStore, StoreError};

/// Whether `req` starts a new epoch.
pub(crate) fn is_new_epoch(req: &PutEnvelope) -> bool {
    req.ext.get(NEW_EPOCH_TAG).is_some()
}

/// Adds the rotation-due and revoked-devices extensions to a `Vaults` answer of `account`.
pub(crate) async fn annotate(
    store: &dyn MetaStore,
    account: AccountId,
    msg: &mut Message,
) -> Result<(), StoreError> {
    let Message::Response(Response::Vaults(vaults)) = msg else {
        return Ok(());
    };
    let due = store.rotations_due(account).await?;
    if !due.is_empty() {
        vaults.ext.push(rotation_due_extension(&due));
    }
    let revoked: Vec<_> = store
        .list_devices(account)
        .await?
        .into_iter()
        .filter(|d| d.is_revoked())
        .map(|d| d.device)
        .collect();
    if !revoked.is_empty() {
        vaults.ext.push(revoked_devices_extension(&revoked));
    }
    Ok(())
}

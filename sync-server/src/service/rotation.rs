//! Key rotation after a revocation. The server cannot rotate (it holds no vault key); it only
//! tells the account's devices that a rotation is due, in the `Vaults` answer
//! ([`ROTATION_DUE_TAG`](dooz_protocol::ROTATION_DUE_TAG)). When a device of the account stores
//! an envelope of an epoch newer than the vault's newest epoch at the revocation, the rotation
//! is done and the mark goes.
//!
//! Non-goal for now: durability. The marks live in memory; after a restart the server no longer
//! asks for a rotation (devices that know of the revocation can still rotate on their own).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use dooz_protocol::{Epoch, Message, Response, VaultId, rotation_due_extension};

use crate::store::{AccountId, MetaStore, StoreError};

/// Vaults whose key must be rotated, with their newest epoch when the rotation became due.
#[derive(Debug, Default)]
pub(crate) struct Rotations {
    due: Mutex<HashMap<VaultId, Epoch>>,
}

impl Rotations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VaultId, Epoch>> {
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A device of `account` was revoked: every vault of the account needs a new epoch.
    pub(crate) async fn device_revoked(
        &self,
        store: &dyn MetaStore,
        account: AccountId,
    ) -> Result<(), StoreError> {
        let vaults = store.list_vaults(account).await?;
        let mut due = self.lock();
        for v in vaults {
            due.entry(v.vault).or_insert(v.latest_epoch);
        }
        Ok(())
    }

    /// An envelope of `epoch` of `vault` was stored: a newer epoch than the one the rotation
    /// replaces ends it.
    pub(crate) fn envelope_stored(&self, vault: VaultId, epoch: Epoch) {
        let mut due = self.lock();
        if due.get(&vault).is_some_and(|old| epoch > *old) {
            due.remove(&vault);
        }
    }

    /// Adds the rotation-due extension to a `Vaults` answer naming any of its vaults.
    pub(crate) fn annotate(&self, msg: &mut Message) {
        let Message::Response(Response::Vaults(vaults)) = msg else {
            return;
        };
        let due = self.lock();
        let ids: Vec<VaultId> = vaults
            .vaults
            .iter()
            .map(|v| v.vault)
            .filter(|v| due.contains_key(v))
            .collect();
        if !ids.is_empty() {
            vaults.ext.push(rotation_due_extension(&ids));
        }
    }
}

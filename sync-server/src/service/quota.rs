//! Enforcing account policies ([`crate::policy`]) on the data plane: subscription access and
//! hard limits, checked before anything is accepted.
//!
//! - Policies are asked of the [`PolicySource`] on connect and before requests, and cached per
//!   account for at most [`POLICY_TTL`], so a plan change reaches live connections within a
//!   second.
//! - Storage: an upload's cost (its sealed length, or nothing when the vault has the chunk
//!   already) is *reserved* before its bytes are read, and the reservation lasts until the chunk
//!   is recorded (or the upload fails). The check counts the stored bytes plus every
//!   reservation, so uploads running in parallel cannot together pass the limit. The count
//!   errs high, never low: between recording a chunk and dropping its reservation the chunk is
//!   counted twice, for a moment.
//! - Vaults and devices: new vaults and enrolments are rare, so they are checked and made under
//!   one server-wide lock, which makes check-then-create atomic within this server.
//! - Soft limits never refuse: going past one is logged as a warning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dooz_protocol::{ErrorCode, Resource};

use crate::policy::{Access, AccountPolicy, Limit, PolicySource};
use crate::store::{AccountId, StoreError, TenantId};

/// How long a fetched policy is used before it is asked for again.
pub(crate) const POLICY_TTL: Duration = Duration::from_secs(1);

/// The policy source, its cache, upload reservations and the creation lock.
pub(crate) struct Policies {
    source: Arc<dyn PolicySource>,
    cache: Mutex<HashMap<AccountId, (Instant, AccountPolicy)>>,
    reserved: Arc<Mutex<HashMap<AccountId, u64>>>,
    /// Held while a vault or a device is checked against its limit and made.
    creation: tokio::sync::Mutex<()>,
}

impl Policies {
    pub(crate) fn new(source: Arc<dyn PolicySource>) -> Self {
        Self {
            source,
            cache: Mutex::new(HashMap::new()),
            reserved: Arc::new(Mutex::new(HashMap::new())),
            creation: tokio::sync::Mutex::new(()),
        }
    }

    /// The account's policy: cached if fetched less than [`POLICY_TTL`] ago, else fetched.
    pub(crate) async fn get(
        &self,
        tenant: TenantId,
        account: AccountId,
    ) -> Result<AccountPolicy, StoreError> {
        if let Some((at, policy)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&account)
            && at.elapsed() < POLICY_TTL
        {
            return Ok(policy.clone());
        }
        let policy = self
            .source
            .account_policy(tenant, account, super::unix_now())
            .await?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(account, (Instant::now(), policy.clone()));
        Ok(policy)
    }

    /// Tells the policy source that a device was enrolled.
    pub(crate) async fn device_enrolled(&self, device: &crate::store::DeviceRecord) {
        self.source.device_enrolled(device).await;
    }

    /// Drops the cached policies, so that the next request asks the source again.
    pub(crate) fn forget(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Reserves `bytes` of the account's storage and returns the reservation and the bytes
    /// reserved by *other* uploads at that moment.
    pub(crate) fn reserve(&self, account: AccountId, bytes: u64) -> (Reservation, u64) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        let total = reserved.entry(account).or_default();
        let others = *total;
        *total = total.saturating_add(bytes);
        (
            Reservation {
                reserved: Arc::clone(&self.reserved),
                account,
                bytes,
            },
            others,
        )
    }

    /// The lock under which vaults and devices are checked against their limits and made.
    pub(crate) async fn creation_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creation.lock().await
    }
}

/// Bytes reserved for an upload in flight; given back when dropped.
pub(crate) struct Reservation {
    reserved: Arc<Mutex<HashMap<AccountId, u64>>>,
    account: AccountId,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(total) = reserved.get_mut(&self.account) {
            *total = total.saturating_sub(self.bytes);
            if *total == 0 {
                reserved.remove(&self.account);
            }
        }
    }
}

/// What kind of request, as access rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads: allowed unless the account is blocked.
    Read,
    /// Writes (`PutChunk`, `Commit`, `CreateVault`, `PutEnvelope`): need full access.
    Write,
}

/// Refuses a request the account's access does not allow, with the message the client shows.
pub(crate) fn check_access(policy: &AccountPolicy, kind: Kind) -> Result<(), (ErrorCode, String)> {
    match (policy.access, kind) {
        (Access::Blocked, _) => Err((
            ErrorCode::SubscriptionInactive,
            "the account's subscription is not active: the server refuses every request \
             (uploads and downloads) until the operator reactivates it"
                .to_owned(),
        )),
        (Access::ReadOnly, Kind::Write) => Err((
            ErrorCode::SubscriptionInactive,
            "the account's subscription is not active: uploads are refused (downloads still \
             work) until the operator reactivates it"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Checks `used + adding` against a limit: `Err` with `QuotaExceeded` past a hard limit; past a
/// soft one, a warning and `Ok`.
pub(crate) fn check_limit(
    limit: Option<Limit>,
    resource: Resource,
    used: u64,
    adding: u64,
    account: AccountId,
) -> Result<(), (ErrorCode, String)> {
    let Some(limit) = limit else { return Ok(()) };
    if used.saturating_add(adding) <= limit.max {
        return Ok(());
    }
    if !limit.hard {
        tracing::warn!(
            %account,
            %resource,
            used,
            adding,
            limit = limit.max,
            "account is past a soft limit"
        );
        return Ok(());
    }
    let message = match resource {
        Resource::StorageBytes => format!(
            "the account's storage quota is full: {used} of {} bytes used, and this chunk needs \
             {adding} more; nothing was stored. Ask the operator to upgrade the plan, or delete \
             files",
            limit.max
        ),
        Resource::Vaults => format!(
            "the account has {used} of the {} vaults its plan allows; no vault was created. Ask \
             the operator to upgrade the plan",
            limit.max
        ),
        Resource::Devices => format!(
            "the account has {used} of the {} devices its plan allows; this device was not \
             enrolled. Revoke a device you no longer use, or ask the operator to upgrade the plan",
            limit.max
        ),
        other => format!(
            "the account's {other} quota is full: {used} of {}",
            limit.max
        ),
    };
    Err((
        ErrorCode::QuotaExceeded {
            resource,
            limit: limit.max,
            used,
        },
        message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limits;

    #[test]
    fn access_rules() {
        let mut policy = AccountPolicy::unlimited();
        assert!(check_access(&policy, Kind::Write).is_ok());
        policy.access = Access::ReadOnly;
        assert!(check_access(&policy, Kind::Read).is_ok());
        let (code, msg) = check_access(&policy, Kind::Write).unwrap_err();
        assert_eq!(code, ErrorCode::SubscriptionInactive);
        assert!(msg.contains("downloads still work"), "{msg}");
        policy.access = Access::Blocked;
        assert!(check_access(&policy, Kind::Read).is_err());
        assert_eq!(policy.limits, Limits::default());
    }

    #[test]
    fn limits() {
        let a = AccountId::new(1);
        assert!(check_limit(None, Resource::Vaults, 100, 1, a).is_ok());
        assert!(check_limit(Some(Limit::hard(10)), Resource::StorageBytes, 6, 4, a).is_ok());
        assert!(check_limit(Some(Limit::soft(10)), Resource::StorageBytes, 6, 5, a).is_ok());
        let (code, _) =
            check_limit(Some(Limit::hard(10)), Resource::StorageBytes, 6, 5, a).unwrap_err();
        assert_eq!(
            code,
            ErrorCode::QuotaExceeded {
                resource: Resource::StorageBytes,
                limit: 10,
                used: 6
            }
        );
    }

    #[test]
    fn reservations_add_up_and_are_given_back() {
        let p = Policies::new(Arc::new(crate::policy::Unlimited));
        let a = AccountId::new(1);
        let (r1, others) = p.reserve(a, 5);
        assert_eq!(others, 0);
        let (r2, others) = p.reserve(a, 7);
        assert_eq!(others, 5);
        drop(r1);
        let (_r3, others) = p.reserve(a, 1);
        assert_eq!(others, 7);
        drop(r2);
        assert_eq!(p.reserve(AccountId::new(2), 1).1, 0);
    }
}

//! What an account may do on the data plane: the seam between the control plane (plans,
//! subscriptions) and the request service that enforces them.
//!
//! The control plane implements [`PolicySource`]; the data plane asks it for an
//! [`AccountPolicy`] when a device connects and before writes (caching the answer for at most
//! one second per account), and refuses what the policy forbids:
//!
//! - [`Access::Blocked`]: every request is answered `SubscriptionInactive` (the connection is
//!   still admitted, so that the client gets a clear error rather than a dropped connection).
//! - [`Access::ReadOnly`]: `PutChunk`, `Commit`, `CreateVault` and `PutEnvelope` are answered
//!   `SubscriptionInactive`; pulls, downloads, history and listings still work.
//! - Hard [`Limits`]: an upload that would take the account's stored bytes past
//!   `storage_bytes`, a new vault past `vaults`, or an enrolment past `devices` is answered
//!   `QuotaExceeded{resource, limit, used}`, *before* the bytes are accepted. Soft limits never
//!   refuse; the server logs a warning.
//!
//! Usage numbers come from the metadata store (`MetaStore::account_usage`). When no control
//! plane is configured, [`Unlimited`] gives everyone [`AccountPolicy::unlimited`].

use async_trait::async_trait;

use crate::store::{AccountId, StoreError, TenantId};

/// What an account may do on the data plane, from its subscription status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Everything (within the limits).
    Full,
    /// Pull, download, history and listings work; `PutChunk`, `Commit`, `CreateVault` and
    /// `PutEnvelope` are refused with `ErrorCode::SubscriptionInactive`.
    ReadOnly,
    /// Every request is refused with `ErrorCode::SubscriptionInactive`.
    Blocked,
}

/// One limit of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The most the account may use (bytes, devices or vaults).
    pub max: u64,
    /// Whether going past `max` is refused (`true`) or only warned about (`false`).
    pub hard: bool,
}

impl Limit {
    /// A hard limit: going past `max` is refused.
    pub const fn hard(max: u64) -> Self {
        Self { max, hard: true }
    }

    /// A soft limit: going past `max` is allowed, and the server warns.
    pub const fn soft(max: u64) -> Self {
        Self { max, hard: false }
    }
}

/// The limits of an account; `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Sealed chunk bytes stored across the account's vaults.
    pub storage_bytes: Option<Limit>,
    /// Devices enrolled and not revoked.
    pub devices: Option<Limit>,
    /// Vaults owned.
    pub vaults: Option<Limit>,
    /// Days an entry's earlier versions are kept after a newer one replaced them; `None`: kept
    /// for ever. Garbage collection forgets older versions and frees the chunks only they used.
    pub retention_days: Option<u64>,
}

/// What an account may do now: its access and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPolicy {
    /// Which requests are allowed at all.
    pub access: Access,
    /// How much the account may use.
    pub limits: Limits,
}

impl AccountPolicy {
    /// Full access, no limits.
    pub fn unlimited() -> Self {
        Self {
            access: Access::Full,
            limits: Limits::default(),
        }
    }
}

/// Where the data plane gets account policies from (the control plane, or [`Unlimited`]).
#[async_trait]
pub trait PolicySource: Send + Sync + 'static {
    /// The account's policy now. Called on connect and before writes; may be cached by the caller
    /// for at most 1 s.
    async fn account_policy(
        &self,
        tenant: TenantId,
        account: AccountId,
        now: u64,
    ) -> Result<AccountPolicy, StoreError>;

    /// A device was just enrolled (the control plane sends a webhook). Default: nothing.
    async fn device_enrolled(&self, _device: &crate::store::DeviceRecord) {}
}

/// Everyone gets [`AccountPolicy::unlimited`]; the default when no control plane is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

#[async_trait]
impl PolicySource for Unlimited {
    async fn account_policy(
        &self,
        _tenant: TenantId,
        _account: AccountId,
        _now: u64,
    ) -> Result<AccountPolicy, StoreError> {
        Ok(AccountPolicy::unlimited())
    }
}

//! [`ControlPolicy`]: account policies from subscriptions and plans.
//!
//! | subscription status | access |
//! |---|---|
//! | trialing, active | full |
//! | past_due | full for the grace period after the status changed, then read-only |
//! | canceled, unpaid | read-only |
//! | paused | blocked |
//! | `cancel_at_period_end` and the period is over | read-only (as canceled) |
//! | none, tenant has no plan | full, no limits (the control plane is not used) |
//! | none, tenant has plans | read-only, no limits (subscribe the account to write) |
//!
//! Limits are the plan's `storage_bytes`, `devices` and `vaults`.

use async_trait::async_trait;

use crate::control::model::SubscriptionStatus;
use crate::control::store::ControlStore;
use crate::control::webhooks::{WebhookSettings, Webhooks};
use crate::policy::{Access, AccountPolicy, Limits, PolicySource};
use crate::store::{AccountId, StoreError, TenantId};

/// Account policies from the control store.
#[derive(Debug, Clone)]
pub struct ControlPolicy {
    store: ControlStore,
    past_due_grace_secs: u64,
    webhooks: Webhooks,
}

impl ControlPolicy {
    /// Policies from `store`, with `past_due` keeping full access for `past_due_grace_secs`.
    /// Its webhooks have [`WebhookSettings::default`].
    pub fn new(store: ControlStore, past_due_grace_secs: u64) -> Self {
        Self {
            webhooks: Webhooks::new(store.clone(), WebhookSettings::default()),
            store,
            past_due_grace_secs,
        }
    }

    /// The same, with webhooks delivered with `settings`.
    #[must_use]
    pub fn with_webhook_settings(mut self, settings: WebhookSettings) -> Self {
        self.webhooks = Webhooks::new(self.store.clone(), settings);
        self
    }

    /// The webhook outbox: run its delivery task with [`Webhooks::run`].
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }
}

#[async_trait]
impl PolicySource for ControlPolicy {
    async fn account_policy(
        &self,
        tenant: TenantId,
        account: AccountId,
        now: u64,
    ) -> Result<AccountPolicy, StoreError> {
        let Some(sub) = self
            .store
            .account_subscription(tenant.get(), account.get())?
        else {
            if self.store.tenant_has_plans(tenant.get())? {
                return Ok(AccountPolicy {
                    access: Access::ReadOnly,
                    limits: Limits::default(),
                });
            }
            return Ok(AccountPolicy::unlimited());
        };
        let mut status = sub.status;
        if sub.cancel_at_period_end && now >= sub.current_period_end {
            status = SubscriptionStatus::Canceled;
        }
        let access = status.access(
            now.saturating_sub(sub.status_changed_at),
            self.past_due_grace_secs,
        );
        let limits = match self.store.plan(tenant.get(), sub.plan)? {
            Some(plan) => Limits {
                storage_bytes: plan.limits.storage_bytes.map(Into::into),
                devices: plan.limits.devices.map(Into::into),
                vaults: plan.limits.vaults.map(Into::into),
                retention_days: plan.limits.retention_days.map(|l| l.max),
            },
            None => {
                return Err(StoreError::Corrupt {
                    tree: "cp1/plans",
                    detail: format!("subscription {} names a missing plan {}", sub.id, sub.plan),
                });
            }
        };
        Ok(AccountPolicy { access, limits })
    }

    async fn device_enrolled(&self, device: &crate::store::DeviceRecord) {
        self.webhooks
            .emit_logged(
                device.tenant.get(),
                "device.enrolled",
                serde_json::json!({ "object": {
                    "id": device.device.to_hex(),
                    "account": device.account.get(),
                    "name": device.name,
                    "created_at": device.created_at,
                }}),
            )
            .await;
        self.webhooks.usage_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::{LimitSpec, PlanLimits, PlanRecord, SubscriptionRecord};
    use crate::policy::Limit;

    #[tokio::test]
    async fn status_and_plan_make_the_policy() {
        let store = ControlStore::temporary().unwrap();
        let policy = ControlPolicy::new(store.clone(), 100);
        let (t, a) = (TenantId::new(1), AccountId::new(2));
        assert_eq!(
            policy.account_policy(t, a, 0).await.unwrap(),
            AccountPolicy::unlimited()
        );
        let plan = store
            .create_plan(PlanRecord {
                id: 0,
                tenant: 1,
                name: "small".into(),
                limits: PlanLimits {
                    storage_bytes: Some(LimitSpec {
                        max: 10,
                        hard: true,
                    }),
                    ..PlanLimits::default()
                },
                prices: None,
                created_at: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            policy.account_policy(t, a, 0).await.unwrap().access,
            Access::ReadOnly
        );
        let mut sub = store
            .create_subscription(SubscriptionRecord {
                id: 0,
                tenant: 1,
                account: 2,
                plan: plan.id,
                status: SubscriptionStatus::PastDue,
                status_changed_at: 1000,
                current_period_start: 0,
                current_period_end: 5000,
                trial_end: None,
                cancel_at_period_end: false,
                created_at: 0,
            })
            .await
            .unwrap();
        let p = policy.account_policy(t, a, 1050).await.unwrap();
        assert_eq!(p.access, Access::Full);
        assert_eq!(p.limits.storage_bytes, Some(Limit::hard(10)));
        assert_eq!(
            policy.account_policy(t, a, 1100).await.unwrap().access,
            Access::ReadOnly
        );
        sub.status = SubscriptionStatus::Active;
        sub.cancel_at_period_end = true;
        store.update_subscription(&sub).await.unwrap();
        assert_eq!(
            policy.account_policy(t, a, 4999).await.unwrap().access,
            Access::Full
        );
        assert_eq!(
            policy.account_policy(t, a, 5000).await.unwrap().access,
            Access::ReadOnly
        );
    }
}

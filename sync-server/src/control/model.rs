//! Control-plane records: plans, subscriptions and their status machine, API keys, audit
//! events. They are stored as JSON in the control store and served as JSON by the API.

use serde::{Deserialize, Serialize};

use crate::policy::{Access, Limit};

/// One limit of a plan: a maximum, hard (refused past it) or soft (warned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The maximum (bytes, devices, vaults or days).
    pub max: u64,
    /// Whether going past `max` is refused.
    pub hard: bool,
}

impl From<LimitSpec> for Limit {
    fn from(spec: LimitSpec) -> Self {
        Self {
            max: spec.max,
            hard: spec.hard,
        }
    }
}

/// A plan's limits; a missing limit means none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Sealed bytes stored across the account's vaults (enforced).
    #[serde(default)]
    pub storage_bytes: Option<LimitSpec>,
    /// Bytes downloaded per calendar month (UTC), as metered: reported in entitlements and by
    /// `quota.threshold` webhooks, never refused.
    #[serde(default)]
    pub monthly_egress_bytes: Option<LimitSpec>,
    /// Devices enrolled and not revoked (enforced).
    #[serde(default)]
    pub devices: Option<LimitSpec>,
    /// Vaults owned (enforced).
    #[serde(default)]
    pub vaults: Option<LimitSpec>,
    /// Days old versions are kept (recorded, not enforced yet).
    #[serde(default)]
    pub retention_days: Option<LimitSpec>,
}

/// The price of one metered quantity: `included` free, then `unit_price` (in the currency's
/// minor unit, e.g. cents) per started `unit` beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterPrice {
    /// Amount included in the base fee, in the meter's unit (bytes, requests, byte-hours).
    #[serde(default)]
    pub included: u64,
    /// How much of the meter one price step covers (e.g. 1000000000 for a GB); at least 1.
    pub unit: u64,
    /// Price of one step, in minor units.
    pub unit_price: u64,
}

impl MeterPrice {
    /// `(overage, amount)` for `usage`.
    pub fn charge(&self, usage: u64) -> (u64, u64) {
        let overage = usage.saturating_sub(self.included);
        let steps = overage.div_ceil(self.unit.max(1));
        (overage, steps.saturating_mul(self.unit_price))
    }
}

/// A plan's prices, for invoice previews (`GET .../invoice_preview`). Amounts are in the
/// currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPrices {
    /// ISO 4217 code, lowercase (`usd`, `eur`).
    pub currency: String,
    /// Fee per billing period.
    #[serde(default)]
    pub base: u64,
    /// Bytes received.
    #[serde(default)]
    pub ingress_bytes: Option<MeterPrice>,
    /// Bytes sent.
    #[serde(default)]
    pub egress_bytes: Option<MeterPrice>,
    /// Requests answered.
    #[serde(default)]
    pub requests: Option<MeterPrice>,
    /// Stored byte-hours (a GB stored for a 30-day month is 720000000000).
    #[serde(default)]
    pub stored_byte_hours: Option<MeterPrice>,
}

/// A tenant's billing settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBilling {
    /// The tenant's customer in Stripe (`cus_...`), put into billing events.
    #[serde(default)]
    pub stripe_customer_id: Option<String>,
}

/// A plan of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanRecord {
    /// Its id.
    pub id: u64,
    /// Its tenant.
    pub tenant: u64,
    /// Its name.
    pub name: String,
    /// Its limits.
    pub limits: PlanLimits,
    /// Its prices, if it is priced.
    #[serde(default)]
    pub prices: Option<PlanPrices>,
    /// When it was made (unix seconds).
    pub created_at: u64,
}

/// A subscription's status: Stripe's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SubscriptionStatus {
    /// In a free trial.
    Trialing,
    /// Paid and current.
    Active,
    /// A payment failed; full access for the grace period, then read-only.
    PastDue,
    /// Ended; read-only (downloads and export).
    Canceled,
    /// Payment retries exhausted; read-only.
    Unpaid,
    /// Paused; no sync.
    Paused,
}

impl SubscriptionStatus {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Trialing,
        Self::Active,
        Self::PastDue,
        Self::Canceled,
        Self::Unpaid,
        Self::Paused,
    ];

    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }

    /// Statuses a subscription may be created with.
    pub fn is_initial(self) -> bool {
        matches!(self, Self::Trialing | Self::Active)
    }

    /// The statuses this one may move to (the transition table of `docs/CONTROL-PLANE.md`).
    pub fn next(self) -> &'static [Self] {
        use SubscriptionStatus::*;
        match self {
            Trialing => &[Active, PastDue, Canceled, Paused],
            Active => &[PastDue, Canceled, Paused],
            PastDue => &[Active, Unpaid, Canceled],
            Unpaid => &[Active, Canceled],
            Paused => &[Active, Canceled],
            Canceled => &[],
        }
    }

    /// Whether moving to `to` is allowed (staying is always allowed).
    pub fn can_become(self, to: Self) -> bool {
        self == to || self.next().contains(&to)
    }

    /// The data-plane access of this status, `since` seconds after it was set, with a past-due
    /// grace period of `grace` seconds.
    pub fn access(self, since: u64, grace: u64) -> Access {
        match self {
            Self::Trialing | Self::Active => Access::Full,
            Self::PastDue if since < grace => Access::Full,
            Self::PastDue | Self::Canceled | Self::Unpaid => Access::ReadOnly,
            Self::Paused => Access::Blocked,
        }
    }
}

/// An account's subscription to a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionRecord {
    /// Its id.
    pub id: u64,
    /// Its tenant.
    pub tenant: u64,
    /// The subscribed account.
    pub account: u64,
    /// The plan.
    pub plan: u64,
    /// Its status.
    pub status: SubscriptionStatus,
    /// When the status last changed (unix seconds).
    pub status_changed_at: u64,
    /// Start of the current billing period (unix seconds).
    pub current_period_start: u64,
    /// End of the current billing period (unix seconds).
    pub current_period_end: u64,
    /// End of the trial, if there is one (unix seconds).
    pub trial_end: Option<u64>,
    /// Whether it ends (becomes canceled) at the end of the period.
    pub cancel_at_period_end: bool,
    /// When it was made (unix seconds).
    pub created_at: u64,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[non_exhaustive]
pub enum Scope {
    /// Everything in its tenant.
    #[serde(rename = "admin")]
    Admin,
    /// Enrolment tokens and devices of its tenant's accounts.
    #[serde(rename = "devices")]
    Devices,
    /// Read accounts and their usage.
    #[serde(rename = "usage:read")]
    UsageRead,
}

/// An API key as stored and listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyRecord {
    /// Its id.
    pub id: u64,
    /// Its tenant.
    pub tenant: u64,
    /// A name to recognise it by.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was made (unix seconds).
    pub created_at: u64,
    /// When it stops working (unix seconds), if ever.
    pub expires_at: Option<u64>,
    /// When it was last used (unix seconds, to the minute), if ever.
    pub last_used: Option<u64>,
    /// When it was revoked (unix seconds), if it was.
    pub revoked_at: Option<u64>,
}

/// One audit event: who did what to what, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Its id (increasing).
    pub id: u64,
    /// When (unix seconds).
    pub at: u64,
    /// The tenant concerned.
    pub tenant: u64,
    /// Who: `admin` (the operator's token) or `key:<id>`.
    pub actor: String,
    /// What, e.g. `subscription.update`.
    pub action: String,
    /// To what, e.g. `subscription/7`.
    pub target: String,
}

/// Event types webhooks carry.
pub const EVENT_TYPES: [&str; 5] = [
    "subscription.created",
    "subscription.updated",
    "device.enrolled",
    "device.revoked",
    "quota.threshold",
];

/// A tenant's webhook endpoint (its signing secret is stored apart and shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: u64,
    /// Its tenant.
    pub tenant: u64,
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The event types sent to it; empty: all.
    pub events: Vec<String>,
    /// Whether deliveries to it are paused.
    pub disabled: bool,
    /// When it was made (unix seconds).
    pub created_at: u64,
}

impl WebhookEndpoint {
    /// Whether events of `event_type` go to this endpoint.
    pub fn wants(&self, event_type: &str) -> bool {
        !self.disabled && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// Not delivered yet; in the outbox, tried again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed; given up.
    Failed,
}

/// One attempt at a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// When (unix milliseconds).
    pub at_ms: u64,
    /// The HTTP status the endpoint answered, if it answered.
    pub response_code: Option<u16>,
    /// Why it failed, when it did without an answer (connection refused, timeout).
    pub error: Option<String>,
}

/// One event on its way to one endpoint: the delivery log's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// Its id.
    pub id: u64,
    /// The tenant.
    pub tenant: u64,
    /// The endpoint.
    pub endpoint: u64,
    /// The event's id (`evt_<n>`), the same for every endpoint it goes to.
    pub event_id: String,
    /// The event's type, e.g. `device.revoked`.
    pub event_type: String,
    /// The exact body POSTed (and signed).
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// The attempts so far, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due (unix milliseconds), while pending.
    pub next_attempt_at_ms: Option<u64>,
    /// When it was made (unix seconds).
    pub created_at: u64,
}

impl DeliveryRecord {
    /// Whether it is still to be delivered.
    pub fn is_pending(&self) -> bool {
        self.status == DeliveryStatus::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_table() {
        use SubscriptionStatus::*;
        assert!(Trialing.can_become(Active));
        assert!(PastDue.can_become(Active));
        assert!(!Canceled.can_become(Active));
        assert!(!Active.can_become(Trialing));
        assert!(!Paused.can_become(PastDue));
        for s in SubscriptionStatus::ALL {
            assert!(s.can_become(s));
            assert!(!s.next().contains(&s));
        }
    }

    #[test]
    fn access_from_status() {
        use SubscriptionStatus::*;
        assert_eq!(Active.access(0, 10), Access::Full);
        assert_eq!(PastDue.access(9, 10), Access::Full);
        assert_eq!(PastDue.access(10, 10), Access::ReadOnly);
        assert_eq!(Canceled.access(0, 10), Access::ReadOnly);
        assert_eq!(Unpaid.access(0, 10), Access::ReadOnly);
        assert_eq!(Paused.access(0, 10), Access::Blocked);
    }

    #[test]
    fn scopes_and_statuses_serialise_as_documented() {
        let json =
            serde_json::to_string(&[Scope::Admin, Scope::Devices, Scope::UsageRead]).unwrap();
        assert_eq!(json, r#"["admin","devices","usage:read"]"#);
        for s in SubscriptionStatus::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}

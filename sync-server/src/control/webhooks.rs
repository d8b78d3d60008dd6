//! Webhooks: signed events POSTed to each tenant's endpoints, from a durable outbox.
//!
//! - [`Webhooks::emit`] writes one [`DeliveryRecord`] per endpoint that wants the event into
//!   the control store (the outbox is a sled tree) and flushes it before returning, so an
//!   event is never lost to a restart; then it wakes the delivery task.
//! - [`Webhooks::run`] is that task: it POSTs every due delivery, records each attempt in the
//!   delivery log, and retries failures with exponential backoff and full jitter
//!   (`random(0 ..= min(max_delay, base * 2^(attempt-1)))`) up to `max_attempts`.
//! - Each POST carries `Dooz-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//!   "<t>.<body>")>` (Stripe's scheme), keyed with the endpoint's whole `whsec_...` secret.
//!   After a secret rotation the previous secret signs too (a second `v1`) until it expires,
//!   so receivers can switch secrets without missing an event.
//! - A delivery can be sent again on request (`.../redeliver`): a new delivery of the same
//!   event (same id and body, so receivers deduplicate), with its own attempts.
//! - The same task deletes expired idempotency records, and checks usage against plan limits (every `usage_check_interval`, and at once
//!   after [`Webhooks::usage_changed`]) and emits `quota.threshold` when an account reaches
//!   80% or 100% of a limit (once per crossing; falling back below re-arms it).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::control::model::{DeliveryAttempt, DeliveryRecord, DeliveryStatus, LimitSpec};
use crate::control::store::ControlStore;
use crate::service::unix_now;
use crate::store::{AccountId, MetaStore, StoreError, TenantId};

/// Prefix of webhook signing secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Dooz-Signature";

/// Retry and timing settings of webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Backoff before the second attempt (doubled for each further one, before jitter).
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max_delay: Duration,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// How long one POST may take.
    pub timeout: Duration,
    /// How often usage is checked against plan limits for `quota.threshold` events.
    pub usage_check_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(30),
            retry_max_delay: Duration::from_secs(6 * 3600),
            max_attempts: 12,
            timeout: Duration::from_secs(10),
            usage_check_interval: Duration::from_secs(60),
        }
    }
}

/// The webhook outbox and its delivery task. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    store: ControlStore,
    settings: WebhookSettings,
    wake: Notify,
    usage: Notify,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Makes a new signing secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| StoreError::Unavailable {
        reason: format!("the operating system's random number generator failed: {e}"),
    })?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `Dooz-Signature` value for `body` sent at `t` (unix seconds).
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    sign_all(&[secret], t, body)
}

/// The `Dooz-Signature` value with one `v1` per secret (during a secret rotation: the new
/// secret's first, then the old one's), as Stripe does.
pub fn sign_all<S: AsRef<str>>(secrets: &[S], t: u64, body: &[u8]) -> String {
    let mut out = format!("t={t}");
    for secret in secrets {
        out.push_str(",v1=");
        out.push_str(&hex(&mac(secret.as_ref(), t, body)));
    }
    out
}

fn mac(secret: &str, t: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Checks a `Dooz-Signature` header against `body` (what a receiver does): a `v1` that
/// matches, in constant time, and a `t` within `tolerance` seconds of `now`.
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now.abs_diff(t) > tolerance {
        return false;
    }
    let expected = hex(&mac(secret, t, body));
    sigs.iter().any(|s| {
        use subtle::ConstantTimeEq as _;
        s.len() == expected.len() && bool::from(s.as_bytes().ct_eq(expected.as_bytes()))
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The backoff after `attempts` failed attempts: full jitter over the exponential bound.
fn backoff(settings: &WebhookSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(32);
    let bound = settings
        .retry_base
        .saturating_mul(1u32 << exp.min(31))
        .min(settings.retry_max_delay);
    let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    let mut r = [0u8; 8];
    if getrandom::getrandom(&mut r).is_err() {
        return bound;
    }
    Duration::from_millis(u64::from_le_bytes(r) % bound_ms.saturating_add(1))
}

impl Webhooks {
    /// Webhooks stored in `store`.
    pub fn new(store: ControlStore, settings: WebhookSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                wake: Notify::new(),
                usage: Notify::new(),
            }),
        }
    }

    /// Queues `event_type` with `data` for each of the tenant's endpoints that wants it, durably,
    /// and wakes the delivery task. Returns the event id, if any endpoint wants it.
    pub async fn emit(
        &self,
        tenant: u64,
        event_type: &str,
        data: Value,
    ) -> Result<Option<String>, StoreError> {
        let store = &self.inner.store;
        let mut endpoints = Vec::new();
        let mut after = None;
        loop {
            let page = store.webhooks(tenant, after, 200)?;
            endpoints.extend(page.data.into_iter().filter(|e| e.wants(event_type)));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        if endpoints.is_empty() {
            return Ok(None);
        }
        let created = unix_now();
        let event_id = format!("evt_{}", store.new_id()?);
        let payload = json!({
            "id": event_id,
            "type": event_type,
            "created": created,
            "tenant": tenant,
            "data": data,
        })
        .to_string();
        for endpoint in endpoints {
            let mut delivery = DeliveryRecord {
                id: 0,
                tenant,
                endpoint: endpoint.id,
                event_id: event_id.clone(),
                event_type: event_type.to_owned(),
                payload: payload.clone(),
                status: DeliveryStatus::Pending,
                attempts: Vec::new(),
                next_attempt_at_ms: Some(now_ms()),
                created_at: created,
            };
            store.put_delivery(&mut delivery)?;
        }
        store.flush().await?;
        self.inner.wake.notify_one();
        Ok(Some(event_id))
    }

    /// [`emit`](Self::emit), logging a failure instead of returning it (for events that follow
    /// a change already made).
    pub async fn emit_logged(&self, tenant: u64, event_type: &str, data: Value) {
        if let Err(e) = self.emit(tenant, event_type, data).await {
            tracing::error!(error = %e, event_type, "could not queue a webhook event");
        }
    }

    /// Wakes the delivery task (an endpoint was enabled again).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Usage may have changed (a device enrolled, a plan changed): check thresholds soon.
    pub fn usage_changed(&self) {
        self.inner.usage.notify_one();
    }

    /// Delivers pending events and checks usage until `cancel` fires.
    pub async fn run(self, meta: Arc<dyn MetaStore>, cancel: CancellationToken) {
        let settings = self.inner.settings;
        let client = match reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "dooz-server/",
                env!("CARGO_PKG_VERSION"),
                " webhooks"
            ))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "could not make the webhook HTTP client; webhooks are not delivered");
                return;
            }
        };
        let mut next_usage = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_usage {
                if let Err(e) = self.check_usage(meta.as_ref()).await {
                    tracing::warn!(error = %e, "could not check usage for quota events");
                }
                // Housekeeping on the same beat: expired idempotency records.
                match self.inner.store.purge_idempotency(unix_now()) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "expired idempotency records deleted"),
                    Err(e) => tracing::warn!(error = %e, "could not purge idempotency records"),
                }
                next_usage = tokio::time::Instant::now() + settings.usage_check_interval;
            }
            let next_due = match self.deliver_due(&client).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox failed; trying again later");
                    Some(now_ms().saturating_add(1000))
                }
            };
            let mut deadline = next_usage;
            if let Some(due) = next_due {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                deadline = deadline.min(tokio::time::Instant::now() + wait);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.wake.notified() => {}
                () = self.inner.usage.notified() => next_usage = tokio::time::Instant::now(),
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Tries every due delivery once (concurrently); returns when the next one is due.
    async fn deliver_due(&self, client: &reqwest::Client) -> Result<Option<u64>, StoreError> {
        let store = &self.inner.store;
        let now = now_ms();
        let mut next = None::<u64>;
        let mut tasks = tokio::task::JoinSet::new();
        for delivery in store.pending_deliveries()? {
            let due = delivery.next_attempt_at_ms.unwrap_or(0);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let Some(endpoint) = store.webhook(delivery.tenant, delivery.endpoint)? else {
                continue;
            };
            if endpoint.disabled {
                // Kept pending; PATCH disabled=false wakes the task again.
                continue;
            }
            let secrets =
                store.webhook_signing_secrets(delivery.tenant, delivery.endpoint, unix_now())?;
            let (client, this) = (client.clone(), self.clone());
            tasks.spawn(async move {
                this.attempt(&client, &endpoint.url, &secrets, delivery)
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(Some(due))) => next = Some(next.map_or(due, |n| n.min(due))),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => tracing::error!(error = %e, "a webhook delivery task failed"),
            }
        }
        store.flush().await?;
        Ok(next)
    }

    /// One POST; records the attempt. Returns when the delivery is due again, if it is.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &str,
        secrets: &[String],
        mut delivery: DeliveryRecord,
    ) -> Result<Option<u64>, StoreError> {
        let settings = &self.inner.settings;
        let t = unix_now();
        let signature = sign_all(secrets, t, delivery.payload.as_bytes());
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Dooz-Event-Id", delivery.event_id.as_str())
            .body(delivery.payload.clone())
            .send()
            .await;
        let (code, error) = match sent {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(e) => (e.status().map(|s| s.as_u16()), Some(error_text(&e))),
        };
        let ok = code.is_some_and(|c| (200..300).contains(&c));
        delivery.attempts.push(DeliveryAttempt {
            at_ms: now_ms(),
            response_code: code,
            error,
        });
        let tries = u32::try_from(delivery.attempts.len()).unwrap_or(u32::MAX);
        if ok {
            delivery.status = DeliveryStatus::Delivered;
            delivery.next_attempt_at_ms = None;
        } else if tries >= settings.max_attempts {
            delivery.status = DeliveryStatus::Failed;
            delivery.next_attempt_at_ms = None;
            tracing::warn!(
                delivery = delivery.id,
                endpoint = delivery.endpoint,
                tries,
                "webhook delivery failed for good"
            );
        } else {
            let delay = u64::try_from(backoff(settings, tries).as_millis()).unwrap_or(u64::MAX);
            delivery.next_attempt_at_ms = Some(now_ms().saturating_add(delay));
            tracing::debug!(
                delivery = delivery.id,
                endpoint = delivery.endpoint,
                code,
                tries,
                delay_ms = delay,
                "webhook delivery failed; will retry"
            );
        }
        self.inner.store.put_delivery(&mut delivery)?;
        Ok(delivery.next_attempt_at_ms)
    }

    /// Emits `quota.threshold` for each account that reached 80% or 100% of a limit since the
    /// last check (tenants with a webhook endpoint only).
    async fn check_usage(&self, meta: &dyn MetaStore) -> Result<(), StoreError> {
        let store = &self.inner.store;
        // Each tenant's egress this calendar month, per account, read once per check.
        let mut egress: std::collections::HashMap<u64, std::collections::HashMap<u64, u64>> =
            std::collections::HashMap::new();
        let now = crate::service::unix_now();
        let month = crate::metering::window_of(
            crate::metering::Window::Month,
            now / crate::store::HOUR_SECS,
        );
        for (tenant, account) in store.all_accounts()? {
            if !store.tenant_has_webhooks(tenant)? {
                continue;
            }
            let Some(sub) = store.account_subscription(tenant, account)? else {
                continue;
            };
            let Some(plan) = store.plan(tenant, sub.plan)? else {
                continue;
            };
            let usage = meta.account_usage(AccountId::new(account)).await?;
            let month_egress = match plan.limits.monthly_egress_bytes {
                None => 0,
                Some(_) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = egress.entry(tenant) {
                        let mut per_account = std::collections::HashMap::new();
                        let hours =
                            month.0 / crate::store::HOUR_SECS..now / crate::store::HOUR_SECS + 1;
                        for (k, c) in meta.traffic(Some(TenantId::new(tenant)), hours).await? {
                            let e: &mut u64 = per_account.entry(k.account.get()).or_default();
                            *e = e.saturating_add(c.egress_bytes);
                        }
                        slot.insert(per_account);
                    }
                    egress
                        .get(&tenant)
                        .and_then(|m| m.get(&account))
                        .copied()
                        .unwrap_or(0)
                }
            };
            let checks: [(&str, Option<LimitSpec>, u64); 4] = [
                (
                    "storage_bytes",
                    plan.limits.storage_bytes,
                    usage.stored_bytes,
                ),
                ("devices", plan.limits.devices, usage.devices),
                ("vaults", plan.limits.vaults, usage.vaults),
                (
                    "monthly_egress_bytes",
                    plan.limits.monthly_egress_bytes,
                    month_egress,
                ),
            ];
            for (resource, limit, used) in checks {
                let level = limit.map_or(0, |l| threshold(used, l.max));
                let last = store.usage_level(account, resource)?;
                if level == last {
                    continue;
                }
                if level > last
                    && let Some(limit) = limit
                {
                    self.emit(
                        tenant,
                        "quota.threshold",
                        json!({
                            "account": account,
                            "resource": resource,
                            "threshold_percent": level,
                            "used": used,
                            "limit": limit.max,
                            "hard": limit.hard,
                        }),
                    )
                    .await?;
                }
                store.set_usage_level(account, resource, level)?;
            }
        }
        store.flush().await
    }
}

/// The threshold (0, 80 or 100) that `used` of `max` has reached.
fn threshold(used: u64, max: u64) -> u8 {
    if used >= max {
        100
    } else if u128::from(used) * 5 >= u128::from(max) * 4 {
        80
    } else {
        0
    }
}

fn error_text(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        let mut text = e.to_string();
        text.truncate(200);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        let header = sign(&secret, 1000, b"{\"a\":1}");
        assert!(verify(&secret, &header, b"{\"a\":1}", 1010, 300));
        assert!(!verify(&secret, &header, b"{\"a\":2}", 1010, 300));
        assert!(!verify("whsec_other", &header, b"{\"a\":1}", 1010, 300));
        assert!(!verify(&secret, &header, b"{\"a\":1}", 2000, 300));
        assert!(!verify(&secret, "v1=00", b"{\"a\":1}", 1000, 300));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_is_bounded_full_jitter() {
        let settings = WebhookSettings {
            retry_base: Duration::from_millis(100),
            retry_max_delay: Duration::from_millis(1000),
            ..WebhookSettings::default()
        };
        for attempts in 1..40 {
            let d = backoff(&settings, attempts);
            let bound = (100u64 << (attempts - 1).min(31)).min(1000);
            assert!(d <= Duration::from_millis(bound), "{attempts}: {d:?}");
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold(0, 10), 0);
        assert_eq!(threshold(7, 10), 0);
        assert_eq!(threshold(8, 10), 80);
        assert_eq!(threshold(10, 10), 100);
        assert_eq!(threshold(11, 10), 100);
        assert_eq!(threshold(0, 0), 100);
    }
}

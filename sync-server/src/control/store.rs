//! The control store: plans, subscriptions, API keys (hashed), the admin token (hashed), the
//! audit log, idempotency records, and indexes of the tenants and accounts made through the
//! API. Tenants, accounts, devices and enrolment tokens themselves live in the
//! [`MetaStore`](crate::MetaStore).
//!
//! It is a sled database of its own (`control/` in the data dir), with versioned tree names
//! (`cp1/...`); records are JSON. Keys are big-endian ids, so trees iterate in id order, and a
//! tenant's records share the tenant id as key prefix. Writes of one operation that touch
//! several trees run under one lock (this server is the store's only writer).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Tree;

use crate::control::model::{
    ApiKeyRecord, AuditRecord, DeliveryRecord, PlanRecord, SubscriptionRecord, WebhookEndpoint,
};
use crate::control::secrets::SecretHash;
use crate::store::StoreError;

const ADMIN_TOKEN_KEY: &[u8] = b"admin_token";

/// How long an `Idempotency-Key` response is kept and replayed: 24 hours.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

/// The control store. Cheap to clone.
#[derive(Clone)]
pub struct ControlStore {
    inner: std::sync::Arc<Inner>,
    credential_key: crate::control::storage::CredentialKey,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore").finish_non_exhaustive()
    }
}

struct Inner {
    db: sled::Db,
    meta: Tree,
    tenants: Tree,
    accounts: Tree,
    plans: Tree,
    subs: Tree,
    account_subs: Tree,
    keys: Tree,
    key_ids: Tree,
    audit: Tree,
    idem: Tree,
    webhooks: Tree,
    webhook_secrets: Tree,
    webhook_old_secrets: Tree,
    deliveries: Tree,
    outbox: Tree,
    usage_levels: Tree,
    tenant_storage: Tree,
    tenant_billing: Tree,
    /// Serialises multi-tree writes.
    write: tokio::sync::Mutex<()>,
}

/// A page of records and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The records, in id order.
    pub data: Vec<T>,
    /// The id to continue after, when there may be more.
    pub next: Option<u64>,
}

/// An endpoint's previous signing secret after a rotation.
#[derive(Serialize, serde::Deserialize)]
struct OldSecret {
    secret: String,
    expires_at: u64,
}

/// A stored response to a POST with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IdempotentResponse {
    /// BLAKE3 of the request (method, path, body).
    pub request_hash: [u8; 32],
    /// The HTTP status.
    pub status: u16,
    /// The body, encrypted with a key derived from the caller's credential and the
    /// idempotency key, neither of which the server stores.
    pub body: Vec<u8>,
    /// When it was stored (unix seconds).
    pub at: u64,
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::from(e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::InvalidInput {
        what: "control record",
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn key3(a: u64, b: u64, c: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..16].copy_from_slice(&b.to_be_bytes());
    k[16..].copy_from_slice(&c.to_be_bytes());
    k
}

fn usage_key(account: u64, resource: &str) -> Vec<u8> {
    let mut k = account.to_be_bytes().to_vec();
    k.extend_from_slice(resource.as_bytes());
    k
}

fn tail_id(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = key.len().checked_sub(8).and_then(|s| key.get(s..)) {
        b.copy_from_slice(tail);
    }
    u64::from_be_bytes(b)
}

impl ControlStore {
    /// Opens (or creates) the store in directory `path`.
    /// The key sealing tenants' storage credentials comes from `DOOZ_STORAGE_KEY` or
    /// `storage.key` next to `path` (see [`CredentialKey`](crate::control::storage::CredentialKey)).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let key = crate::control::storage::CredentialKey::load_or_create(
            path.parent().unwrap_or(Path::new(".")),
        )?;
        Self::from_config(sled::Config::new().path(path), key)
    }

    /// A store in a temporary directory, gone when dropped (tests).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::from_config(
            sled::Config::new().temporary(true),
            crate::control::storage::CredentialKey::ephemeral()?,
        )
    }

    fn from_config(
        config: sled::Config,
        credential_key: crate::control::storage::CredentialKey,
    ) -> Result<Self, StoreError> {
        let db = config.open().map_err(sled_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(sled_err);
        let inner = Inner {
            meta: tree("cp1/meta")?,
            tenants: tree("cp1/tenants")?,
            accounts: tree("cp1/accounts")?,
            plans: tree("cp1/plans")?,
            subs: tree("cp1/subscriptions")?,
            account_subs: tree("cp1/account_subscriptions")?,
            keys: tree("cp1/api_keys")?,
            key_ids: tree("cp1/api_key_ids")?,
            audit: tree("cp1/audit")?,
            idem: tree("cp1/idempotency")?,
            webhooks: tree("cp1/webhooks")?,
            webhook_secrets: tree("cp1/webhook_secrets")?,
            webhook_old_secrets: tree("cp1/webhook_old_secrets")?,
            deliveries: tree("cp1/webhook_deliveries")?,
            outbox: tree("cp1/webhook_outbox")?,
            usage_levels: tree("cp1/usage_levels")?,
            tenant_storage: tree("cp1/tenant_storage")?,
            tenant_billing: tree("cp1/tenant_billing")?,
            write: tokio::sync::Mutex::new(()),
            db,
        };
        Ok(Self {
            inner: std::sync::Arc::new(inner),
            credential_key,
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await.map_err(sled_err)?;
        Ok(())
    }

    /// Whether the store answers (for `/readyz`).
    pub fn check(&self) -> Result<(), StoreError> {
        self.inner.meta.get(ADMIN_TOKEN_KEY).map_err(sled_err)?;
        Ok(())
    }

    /// A new id, unique in this store (event ids).
    pub fn new_id(&self) -> Result<u64, StoreError> {
        self.next_id()
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // generate_id starts at 0; ids start at 1.
        Ok(self.inner.db.generate_id().map_err(sled_err)? + 1)
    }

    // --- admin token -----------------------------------------------------------------------

    /// The stored hash of the admin token, if one was set.
    pub fn admin_token_hash(&self) -> Result<Option<SecretHash>, StoreError> {
        let Some(v) = self.inner.meta.get(ADMIN_TOKEN_KEY).map_err(sled_err)? else {
            return Ok(None);
        };
        let bytes: [u8; 32] = v
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::corrupt("cp1/meta", "admin token hash is not 32 bytes"))?;
        Ok(Some(SecretHash(bytes)))
    }

    /// Stores the hash of the admin token (replacing any).
    pub async fn set_admin_token_hash(&self, hash: &SecretHash) -> Result<(), StoreError> {
        self.inner
            .meta
            .insert(ADMIN_TOKEN_KEY, hash.as_bytes().as_slice())
            .map_err(sled_err)?;
        self.flush().await
    }

    // --- tenant and account indexes --------------------------------------------------------

    /// Remembers a tenant made through the API.
    pub async fn add_tenant(&self, tenant: u64, at: u64) -> Result<(), StoreError> {
        self.inner
            .tenants
            .insert(tenant.to_be_bytes(), &at.to_be_bytes())
            .map_err(sled_err)?;
        self.flush().await
    }

    /// Tenants made through the API, by id, after `after`.
    pub fn tenants(&self, after: Option<u64>, limit: usize) -> Result<Page<u64>, StoreError> {
        page_ids(&self.inner.tenants, &[], after, limit)
    }

    /// Remembers an account made through the API.
    pub async fn add_account(&self, tenant: u64, account: u64, at: u64) -> Result<(), StoreError> {
        self.inner
            .accounts
            .insert(key2(tenant, account), &at.to_be_bytes())
            .map_err(sled_err)?;
        self.flush().await
    }

    /// Forgets an account: its place in the index, its subscriptions and its reported usage
    /// levels. Call under [`lock`](Self::lock).
    pub async fn delete_account(&self, tenant: u64, account: u64) -> Result<(), StoreError> {
        for item in self.inner.subs.scan_prefix(tenant.to_be_bytes()) {
            let (k, v) = item.map_err(sled_err)?;
            let sub: SubscriptionRecord = decode("cp1/subscriptions", &v)?;
            if sub.account == account {
                self.inner.subs.remove(k).map_err(sled_err)?;
            }
        }
        self.inner
            .account_subs
            .remove(account.to_be_bytes())
            .map_err(sled_err)?;
        for item in self.inner.usage_levels.scan_prefix(account.to_be_bytes()) {
            let (k, _) = item.map_err(sled_err)?;
            self.inner.usage_levels.remove(k).map_err(sled_err)?;
        }
        self.inner
            .accounts
            .remove(key2(tenant, account))
            .map_err(sled_err)?;
        self.flush().await
    }

    /// A tenant's accounts made through the API, by id, after `after`.
    pub fn accounts(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<u64>, StoreError> {
        page_ids(&self.inner.accounts, &tenant.to_be_bytes(), after, limit)
    }

    // --- plans -----------------------------------------------------------------------------

    /// Stores a new plan; `plan.id` is assigned.
    pub async fn create_plan(&self, mut plan: PlanRecord) -> Result<PlanRecord, StoreError> {
        plan.id = self.next_id()?;
        self.put(&self.inner.plans, key2(plan.tenant, plan.id), &plan)?;
        self.flush().await?;
        Ok(plan)
    }

    /// Replaces a plan.
    pub async fn update_plan(&self, plan: &PlanRecord) -> Result<(), StoreError> {
        self.put(&self.inner.plans, key2(plan.tenant, plan.id), plan)?;
        self.flush().await
    }

    /// A plan of `tenant`.
    pub fn plan(&self, tenant: u64, id: u64) -> Result<Option<PlanRecord>, StoreError> {
        self.get(&self.inner.plans, "cp1/plans", key2(tenant, id))
    }

    /// A tenant's plans.
    pub fn plans(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<PlanRecord>, StoreError> {
        page_records(
            &self.inner.plans,
            "cp1/plans",
            &tenant.to_be_bytes(),
            after,
            limit,
        )
    }

    /// Deletes a plan. Call under [`lock`](Self::lock), after
    /// [`plan_subscription`](Self::plan_subscription) found none.
    pub async fn delete_plan(&self, tenant: u64, id: u64) -> Result<(), StoreError> {
        self.inner
            .plans
            .remove(key2(tenant, id))
            .map_err(sled_err)?;
        self.flush().await
    }

    /// A subscription of the tenant (canceled ones too) that names `plan`, if any.
    pub fn plan_subscription(&self, tenant: u64, plan: u64) -> Result<Option<u64>, StoreError> {
        for item in self.inner.subs.scan_prefix(tenant.to_be_bytes()) {
            let (_, v) = item.map_err(sled_err)?;
            let sub: SubscriptionRecord = decode("cp1/subscriptions", &v)?;
            if sub.plan == plan {
                return Ok(Some(sub.id));
            }
        }
        Ok(None)
    }

    /// Whether the tenant uses the control plane (has a plan).
    pub fn tenant_has_plans(&self, tenant: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .plans
            .scan_prefix(tenant.to_be_bytes())
            .next()
            .transpose()
            .map_err(sled_err)?
            .is_some())
    }

    // --- subscriptions ---------------------------------------------------------------------

    /// Holds the write lock (for check-then-write sequences of the API).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.write.lock().await
    }

    /// Stores a new subscription and makes it the account's current one; `sub.id` is assigned.
    /// Call under [`lock`](Self::lock).
    pub async fn create_subscription(
        &self,
        mut sub: SubscriptionRecord,
    ) -> Result<SubscriptionRecord, StoreError> {
        sub.id = self.next_id()?;
        self.put(&self.inner.subs, key2(sub.tenant, sub.id), &sub)?;
        self.inner
            .account_subs
            .insert(sub.account.to_be_bytes(), &sub.id.to_be_bytes())
            .map_err(sled_err)?;
        self.flush().await?;
        Ok(sub)
    }

    /// Replaces a subscription.
    pub async fn update_subscription(&self, sub: &SubscriptionRecord) -> Result<(), StoreError> {
        self.put(&self.inner.subs, key2(sub.tenant, sub.id), sub)?;
        self.flush().await
    }

    /// A subscription of `tenant`.
    pub fn subscription(
        &self,
        tenant: u64,
        id: u64,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.get(&self.inner.subs, "cp1/subscriptions", key2(tenant, id))
    }

    /// A tenant's subscriptions.
    pub fn subscriptions(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<SubscriptionRecord>, StoreError> {
        page_records(
            &self.inner.subs,
            "cp1/subscriptions",
            &tenant.to_be_bytes(),
            after,
            limit,
        )
    }

    /// The account's current (latest) subscription.
    pub fn account_subscription(
        &self,
        tenant: u64,
        account: u64,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        let Some(id) = self
            .inner
            .account_subs
            .get(account.to_be_bytes())
            .map_err(sled_err)?
        else {
            return Ok(None);
        };
        self.subscription(tenant, tail_id(&id))
    }

    // --- API keys --------------------------------------------------------------------------

    /// Stores a new API key under its hash; `key.id` is assigned.
    pub async fn create_api_key(
        &self,
        mut key: ApiKeyRecord,
        hash: &SecretHash,
    ) -> Result<ApiKeyRecord, StoreError> {
        key.id = self.next_id()?;
        self.put(&self.inner.keys, hash.as_bytes(), &key)?;
        self.inner
            .key_ids
            .insert(key2(key.tenant, key.id), hash.as_bytes().as_slice())
            .map_err(sled_err)?;
        self.flush().await?;
        Ok(key)
    }

    /// The key with this hash.
    pub fn api_key_by_hash(&self, hash: &SecretHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(&self.inner.keys, "cp1/api_keys", hash.as_bytes())
    }

    fn key_hash(&self, tenant: u64, id: u64) -> Result<Option<SecretHash>, StoreError> {
        let Some(v) = self.inner.key_ids.get(key2(tenant, id)).map_err(sled_err)? else {
            return Ok(None);
        };
        let bytes: [u8; 32] = v
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::corrupt("cp1/api_key_ids", "hash is not 32 bytes"))?;
        Ok(Some(SecretHash(bytes)))
    }

    /// A key of `tenant` by id.
    pub fn api_key(&self, tenant: u64, id: u64) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.key_hash(tenant, id)? {
            Some(hash) => self.api_key_by_hash(&hash),
            None => Ok(None),
        }
    }

    /// Replaces a key's record (revocation, last use).
    pub fn update_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        if let Some(hash) = self.key_hash(key.tenant, key.id)? {
            self.put(&self.inner.keys, hash.as_bytes(), key)?;
        }
        Ok(())
    }

    /// Deletes a key (it stops working at once); `false` when there was none.
    pub async fn delete_api_key(&self, tenant: u64, id: u64) -> Result<bool, StoreError> {
        let Some(hash) = self.key_hash(tenant, id)? else {
            return Ok(false);
        };
        self.inner.keys.remove(hash.as_bytes()).map_err(sled_err)?;
        self.inner
            .key_ids
            .remove(key2(tenant, id))
            .map_err(sled_err)?;
        self.flush().await?;
        Ok(true)
    }

    /// A tenant's keys.
    pub fn api_keys(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, StoreError> {
        let ids = page_ids(&self.inner.key_ids, &tenant.to_be_bytes(), after, limit)?;
        let mut data = Vec::with_capacity(ids.data.len());
        for id in ids.data {
            if let Some(key) = self.api_key(tenant, id)? {
                data.push(key);
            }
        }
        Ok(Page {
            data,
            next: ids.next,
        })
    }

    // --- audit -----------------------------------------------------------------------------

    /// Appends an audit event; `event.id` is assigned.
    pub fn audit(&self, mut event: AuditRecord) -> Result<(), StoreError> {
        event.id = self.next_id()?;
        self.put(&self.inner.audit, key2(event.tenant, event.id), &event)
    }

    /// A tenant's audit events, oldest first, that pass `filter`.
    pub fn audit_events(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
        filter: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Page<AuditRecord>, StoreError> {
        let start = key2(tenant, after.map_or(0, |a| a.saturating_add(1)));
        let end = key2(tenant, u64::MAX);
        let mut data = Vec::new();
        for item in self.inner.audit.range(start..=end) {
            let (_, v) = item.map_err(sled_err)?;
            let event: AuditRecord = decode("cp1/audit", &v)?;
            if !filter(&event) {
                continue;
            }
            if data.len() == limit {
                let next = data.last().map(|e: &AuditRecord| e.id);
                return Ok(Page { data, next });
            }
            data.push(event);
        }
        Ok(Page { data, next: None })
    }

    // --- idempotency -----------------------------------------------------------------------

    /// The stored response under `key` (a hash of the caller and the idempotency key), unless
    /// it is older than [`IDEMPOTENCY_TTL_SECS`].
    pub fn idempotent_response(
        &self,
        key: &[u8; 32],
    ) -> Result<Option<IdempotentResponse>, StoreError> {
        let found: Option<IdempotentResponse> =
            self.get(&self.inner.idem, "cp1/idempotency", key)?;
        let now = crate::service::unix_now();
        Ok(found.filter(|r| r.at.saturating_add(IDEMPOTENCY_TTL_SECS) > now))
    }

    /// Deletes idempotency records older than [`IDEMPOTENCY_TTL_SECS`]; returns how many.
    pub fn purge_idempotency(&self, now: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        for item in self.inner.idem.iter() {
            let (k, v) = item.map_err(sled_err)?;
            let expired = decode::<IdempotentResponse>("cp1/idempotency", &v)
                .map_or(true, |r| r.at.saturating_add(IDEMPOTENCY_TTL_SECS) <= now);
            if expired {
                self.inner.idem.remove(k).map_err(sled_err)?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Stores a response under `key`.
    pub async fn put_idempotent_response(
        &self,
        key: &[u8; 32],
        response: &IdempotentResponse,
    ) -> Result<(), StoreError> {
        self.put(&self.inner.idem, key, response)?;
        self.flush().await
    }

    // --- webhooks --------------------------------------------------------------------------

    /// Stores a new webhook endpoint and its signing secret; `endpoint.id` is assigned.
    pub async fn create_webhook(
        &self,
        mut endpoint: WebhookEndpoint,
        secret: &str,
    ) -> Result<WebhookEndpoint, StoreError> {
        endpoint.id = self.next_id()?;
        let key = key2(endpoint.tenant, endpoint.id);
        self.inner
            .webhook_secrets
            .insert(key, secret.as_bytes())
            .map_err(sled_err)?;
        self.put(&self.inner.webhooks, key, &endpoint)?;
        self.flush().await?;
        Ok(endpoint)
    }

    /// Replaces a webhook endpoint.
    pub async fn update_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        self.put(
            &self.inner.webhooks,
            key2(endpoint.tenant, endpoint.id),
            endpoint,
        )?;
        self.flush().await
    }

    /// Deletes a webhook endpoint, its secret, its delivery log and its pending deliveries.
    pub async fn delete_webhook(&self, tenant: u64, id: u64) -> Result<(), StoreError> {
        let key = key2(tenant, id);
        self.inner.webhooks.remove(key).map_err(sled_err)?;
        self.inner.webhook_secrets.remove(key).map_err(sled_err)?;
        self.inner
            .webhook_old_secrets
            .remove(key)
            .map_err(sled_err)?;
        for item in self.inner.deliveries.scan_prefix(key) {
            let (k, _) = item.map_err(sled_err)?;
            self.inner
                .outbox
                .remove(tail_id(&k).to_be_bytes())
                .map_err(sled_err)?;
            self.inner.deliveries.remove(k).map_err(sled_err)?;
        }
        self.flush().await
    }

    /// A webhook endpoint of `tenant`.
    pub fn webhook(&self, tenant: u64, id: u64) -> Result<Option<WebhookEndpoint>, StoreError> {
        self.get(&self.inner.webhooks, "cp1/webhooks", key2(tenant, id))
    }

    /// The signing secret of a webhook endpoint.
    pub fn webhook_secret(&self, tenant: u64, id: u64) -> Result<Option<String>, StoreError> {
        match self
            .inner
            .webhook_secrets
            .get(key2(tenant, id))
            .map_err(sled_err)?
        {
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::corrupt("cp1/webhook_secrets", "secret is not UTF-8")),
            None => Ok(None),
        }
    }

    /// The key sealing tenants' storage credentials.
    pub fn credential_key(&self) -> &crate::control::storage::CredentialKey {
        &self.credential_key
    }

    /// Where a tenant's blobs are, if it ever set storage of its own.
    pub fn tenant_storage(
        &self,
        tenant: u64,
    ) -> Result<Option<crate::control::storage::TenantStorageRecord>, StoreError> {
        self.get(
            &self.inner.tenant_storage,
            "cp1/tenant_storage",
            tenant.to_be_bytes(),
        )
    }

    /// Stores where a tenant's blobs are. **Durable.**
    pub async fn put_tenant_storage(
        &self,
        tenant: u64,
        record: &crate::control::storage::TenantStorageRecord,
    ) -> Result<(), StoreError> {
        self.put(&self.inner.tenant_storage, tenant.to_be_bytes(), record)?;
        self.flush().await
    }

    /// Every tenant's storage record.
    pub fn tenant_storages(
        &self,
    ) -> Result<Vec<(u64, crate::control::storage::TenantStorageRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tenant_storage.iter() {
            let (k, v) = item.map_err(sled_err)?;
            out.push((tail_id(&k), decode("cp1/tenant_storage", &v)?));
        }
        Ok(out)
    }

    /// Replaces an endpoint's signing secret with `new`; the current one stays in use beside it
    /// (deliveries carry both signatures) until `old_expires_at` (unix seconds).
    pub async fn rotate_webhook_secret(
        &self,
        tenant: u64,
        id: u64,
        new: &str,
        old_expires_at: u64,
    ) -> Result<(), StoreError> {
        let key = key2(tenant, id);
        let Some(current) = self.webhook_secret(tenant, id)? else {
            return Err(StoreError::NotFound {
                what: format!("webhook endpoint {id}"),
            });
        };
        let old = OldSecret {
            secret: current,
            expires_at: old_expires_at,
        };
        self.put(&self.inner.webhook_old_secrets, key, &old)?;
        self.inner
            .webhook_secrets
            .insert(key, new.as_bytes())
            .map_err(sled_err)?;
        self.flush().await
    }

    /// The secrets to sign an endpoint's deliveries with at `now`: the current one, then the
    /// previous one while it has not expired.
    pub fn webhook_signing_secrets(
        &self,
        tenant: u64,
        id: u64,
        now: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = self.webhook_secret(tenant, id)?.into_iter().collect();
        let old: Option<OldSecret> = self.get(
            &self.inner.webhook_old_secrets,
            "cp1/webhook_old_secrets",
            key2(tenant, id),
        )?;
        if let Some(old) = old.filter(|o| o.expires_at > now) {
            out.push(old.secret);
        }
        Ok(out)
    }

    /// When the previous secret of an endpoint stops being used, if one is still in use at
    /// `now`.
    pub fn webhook_old_secret_expiry(
        &self,
        tenant: u64,
        id: u64,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let old: Option<OldSecret> = self.get(
            &self.inner.webhook_old_secrets,
            "cp1/webhook_old_secrets",
            key2(tenant, id),
        )?;
        Ok(old.map(|o| o.expires_at).filter(|at| *at > now))
    }

    /// A tenant's webhook endpoints.
    pub fn webhooks(
        &self,
        tenant: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WebhookEndpoint>, StoreError> {
        page_records(
            &self.inner.webhooks,
            "cp1/webhooks",
            &tenant.to_be_bytes(),
            after,
            limit,
        )
    }

    /// Whether the tenant has a webhook endpoint.
    pub fn tenant_has_webhooks(&self, tenant: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .webhooks
            .scan_prefix(tenant.to_be_bytes())
            .next()
            .transpose()
            .map_err(sled_err)?
            .is_some())
    }

    /// Stores a delivery (new or updated): pending ones are in the outbox, others not. A new
    /// delivery (`id` 0) gets an id. Not flushed: call [`flush`](Self::flush).
    pub fn put_delivery(&self, delivery: &mut DeliveryRecord) -> Result<(), StoreError> {
        if delivery.id == 0 {
            delivery.id = self.next_id()?;
        }
        let key = key3(delivery.tenant, delivery.endpoint, delivery.id);
        self.put(&self.inner.deliveries, key, delivery)?;
        if delivery.is_pending() {
            self.inner
                .outbox
                .insert(delivery.id.to_be_bytes(), key.as_slice())
                .map_err(sled_err)?;
        } else {
            self.inner
                .outbox
                .remove(delivery.id.to_be_bytes())
                .map_err(sled_err)?;
        }
        Ok(())
    }

    /// Every pending delivery (the outbox), oldest first.
    pub fn pending_deliveries(&self) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.outbox.iter() {
            let (_, key) = item.map_err(sled_err)?;
            if let Some(d) = self.get(&self.inner.deliveries, "cp1/webhook_deliveries", &key)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// One delivery of an endpoint.
    pub fn delivery(
        &self,
        tenant: u64,
        endpoint: u64,
        id: u64,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        self.get(
            &self.inner.deliveries,
            "cp1/webhook_deliveries",
            key3(tenant, endpoint, id),
        )
    }

    /// An endpoint's delivery log, oldest first.
    pub fn deliveries(
        &self,
        tenant: u64,
        endpoint: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<DeliveryRecord>, StoreError> {
        page_records(
            &self.inner.deliveries,
            "cp1/webhook_deliveries",
            &key2(tenant, endpoint),
            after,
            limit,
        )
    }

    /// Every `(tenant, account)` made through the API.
    pub fn all_accounts(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.accounts.iter() {
            let (k, _) = item.map_err(sled_err)?;
            let mut t = [0u8; 8];
            if let Some(head) = k.get(..8) {
                t.copy_from_slice(head);
            }
            out.push((u64::from_be_bytes(t), tail_id(&k)));
        }
        Ok(out)
    }

    /// A tenant's billing settings (its Stripe customer), if set.
    pub fn tenant_billing(
        &self,
        tenant: u64,
    ) -> Result<Option<crate::control::model::TenantBilling>, StoreError> {
        self.get(
            &self.inner.tenant_billing,
            "cp1/tenant_billing",
            tenant.to_be_bytes(),
        )
    }

    /// Sets a tenant's billing settings.
    pub async fn set_tenant_billing(
        &self,
        tenant: u64,
        billing: &crate::control::model::TenantBilling,
    ) -> Result<(), StoreError> {
        self.put(&self.inner.tenant_billing, tenant.to_be_bytes(), billing)?;
        self.flush().await
    }

    /// The last usage level (0, 80 or 100 percent) reported for an account's resource.
    pub fn usage_level(&self, account: u64, resource: &str) -> Result<u8, StoreError> {
        Ok(self
            .inner
            .usage_levels
            .get(usage_key(account, resource))
            .map_err(sled_err)?
            .and_then(|v| v.first().copied())
            .unwrap_or(0))
    }

    /// Remembers the usage level reported for an account's resource.
    pub fn set_usage_level(
        &self,
        account: u64,
        resource: &str,
        level: u8,
    ) -> Result<(), StoreError> {
        self.inner
            .usage_levels
            .insert(usage_key(account, resource), &[level])
            .map_err(sled_err)?;
        Ok(())
    }

    // --- helpers ---------------------------------------------------------------------------

    fn put<T: Serialize>(
        &self,
        tree: &Tree,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), StoreError> {
        tree.insert(key.as_ref(), encode(value)?)
            .map_err(sled_err)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &'static str,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key.as_ref()).map_err(sled_err)? {
            Some(v) => decode(name, &v).map(Some),
            None => Ok(None),
        }
    }
}

/// Ids (the last 8 key bytes) under `prefix`, after `after`, at most `limit`.
fn page_ids(
    tree: &Tree,
    prefix: &[u8],
    after: Option<u64>,
    limit: usize,
) -> Result<Page<u64>, StoreError> {
    let page = page_raw(tree, prefix, after, limit)?;
    Ok(Page {
        data: page.data.into_iter().map(|(id, _)| id).collect(),
        next: page.next,
    })
}

fn page_records<T: DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
    prefix: &[u8],
    after: Option<u64>,
    limit: usize,
) -> Result<Page<T>, StoreError> {
    let page = page_raw(tree, prefix, after, limit)?;
    let mut data = Vec::with_capacity(page.data.len());
    for (_, v) in page.data {
        data.push(decode(name, &v)?);
    }
    Ok(Page {
        data,
        next: page.next,
    })
}

fn page_raw(
    tree: &Tree,
    prefix: &[u8],
    after: Option<u64>,
    limit: usize,
) -> Result<Page<(u64, sled::IVec)>, StoreError> {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
    let mut data = Vec::new();
    for item in tree.range(start..) {
        let (k, v) = item.map_err(sled_err)?;
        if !k.starts_with(prefix) || k.len() != prefix.len() + 8 {
            break;
        }
        if data.len() == limit {
            let next = data.last().map(|(id, _)| *id);
            return Ok(Page { data, next });
        }
        data.push((tail_id(&k), v));
    }
    Ok(Page { data, next: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idempotency_records_expire_after_a_day() {
        let store = ControlStore::temporary().unwrap();
        let now = crate::service::unix_now();
        let record = |at| IdempotentResponse {
            request_hash: [1; 32],
            status: 201,
            body: vec![1, 2, 3],
            at,
        };
        let fresh = record(now - 60);
        store
            .put_idempotent_response(&[1; 32], &fresh)
            .await
            .unwrap();
        store
            .put_idempotent_response(&[2; 32], &record(now - IDEMPOTENCY_TTL_SECS - 1))
            .await
            .unwrap();
        assert_eq!(store.idempotent_response(&[1; 32]).unwrap(), Some(fresh));
        assert_eq!(store.idempotent_response(&[2; 32]).unwrap(), None);
        assert_eq!(store.purge_idempotency(now).unwrap(), 1);
        assert!(store.idempotent_response(&[1; 32]).unwrap().is_some());
        assert!(store.inner.idem.get([2u8; 32]).unwrap().is_none());
    }
}

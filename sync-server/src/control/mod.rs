//! The control plane: an HTTP API under `/v1` (axum) for operators and tenants, served by
//! `dooz-server` next to the QUIC data plane and sharing its [`MetaStore`].
//!
//! # Goals
//!
//! - Tenants (operator's admin token), and in each tenant: API keys with scopes, accounts,
//!   plans with hard or soft limits, subscriptions with Stripe's statuses and a transition
//!   table, enrolment tokens, devices (list, revoke: live connections close at once), an audit
//!   log, and an export of all of a tenant's control-plane data (GDPR).
//! - Secrets shown once and stored hashed ([`secrets`]); a key of one tenant sees nothing of
//!   another (404, as for a missing resource).
//! - RFC 9457 problem+json for every failure ([`problem`]), cursor pagination,
//!   `Idempotency-Key` on POST ([`idempotency`]), RateLimit headers and 429 per credential
//!   ([`rate_limit`]), request ids in traces ([`request_id`]), `/healthz`, `/readyz` and
//!   `/metrics` ([`metrics`]).
//! - Account policies for the data plane from subscriptions and plans ([`ControlPolicy`]).
//! - Webhooks: signed events from a durable outbox, retried with backoff ([`webhooks`]).
//!
//! # Non-goals (not built yet)
//!
//! OpenAPI, tenant deletion, egress and retention enforcement. See `docs/CONTROL-PLANE.md`.

pub mod auth;
pub mod idempotency;
pub mod metrics;
pub mod model;
mod openapi;
pub mod policy;
pub mod problem;
pub mod rate_limit;
pub mod request_id;
mod routes;
pub mod secrets;
pub mod storage;
pub mod store;
mod usage;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use dooz_protocol::{DeviceId, VaultId};
use dooz_storage::BlobStore;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use policy::ControlPolicy;
pub use problem::Problem;
pub use secrets::{Secret, SecretKind};
pub use store::ControlStore;
pub use webhooks::{WebhookSettings, Webhooks};

use crate::service::Server;
use crate::store::{DeviceRecord, MetaStore, StoreError, TenantId};

/// Directory of the control store inside the data dir.
pub const CONTROL_DIR: &str = "control";

/// What the control plane needs of the data plane.
#[async_trait]
pub trait DataPlane: Send + Sync + 'static {
    /// Revokes a device and closes its live connections at once.
    async fn revoke_device(&self, device: DeviceId) -> Result<DeviceRecord, StoreError>;
    /// Plans or subscriptions changed: forget cached account policies.
    fn policies_changed(&self);
    /// Whether the blob backend answers (`/readyz`); the error says why not.
    async fn check_blobs(&self) -> Result<(), String> {
        Ok(())
    }
    /// Deletes every blob of a vault (under `<tenant>/<vault hex>/`: chunks and packs) and
    /// returns how many there were.
    async fn delete_vault_blobs(&self, tenant: TenantId, vault: VaultId) -> Result<u64, String> {
        let _ = (tenant, vault);
        Ok(0)
    }
    /// Puts `tenant`'s blobs in `store` (`None`: the default backend) without moving any.
    fn set_tenant_store(&self, tenant: TenantId, store: Option<Arc<dyn BlobStore>>) {
        let _ = (tenant, store);
    }
    /// Moves `tenant`'s blobs from `old` to `new` in the background (`None`: the default
    /// backend); `on_done` gets the outcome.
    fn migrate_tenant(
        &self,
        tenant: TenantId,
        new: Option<Arc<dyn BlobStore>>,
        old: Option<Arc<dyn BlobStore>>,
        on_done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        let _ = (tenant, new, old);
        on_done(Ok(()));
    }
    /// Metering totals since start, for `/metrics`.
    fn meter_totals(&self) -> Option<crate::service::MeterTotals> {
        None
    }
    /// The progress of `tenant`'s blob move: `(listed, total, moved, bytes)`.
    fn migration(&self, tenant: TenantId) -> Option<(bool, u64, u64, u64)> {
        let _ = tenant;
        None
    }
}

#[async_trait]
impl DataPlane for Server {
    async fn revoke_device(&self, device: DeviceId) -> Result<DeviceRecord, StoreError> {
        Server::revoke_device(self, device).await
    }

    fn policies_changed(&self) {
        self.forget_cached_policies();
    }

    fn meter_totals(&self) -> Option<crate::service::MeterTotals> {
        Some(Server::meter_totals(self))
    }

    async fn check_blobs(&self) -> Result<(), String> {
        // A head on a key that is never written: "not found" is an answer.
        let key = dooz_storage::BlobKey::new(READY_PROBE_KEY).map_err(|e| e.to_string())?;
        match self.blobs().head(&key).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn set_tenant_store(&self, tenant: TenantId, store: Option<Arc<dyn BlobStore>>) {
        Server::set_tenant_store(self, tenant, store);
    }

    fn migrate_tenant(
        &self,
        tenant: TenantId,
        new: Option<Arc<dyn BlobStore>>,
        old: Option<Arc<dyn BlobStore>>,
        on_done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        Server::migrate_tenant(self, tenant, new, old, on_done);
    }

    fn migration(&self, tenant: TenantId) -> Option<(bool, u64, u64, u64)> {
        Server::migration(self, tenant)
    }

    async fn delete_vault_blobs(&self, tenant: TenantId, vault: VaultId) -> Result<u64, String> {
        let prefix = dooz_storage::BlobKey::new(&format!("{tenant}/{}", vault.to_hex()))
            .map_err(|e| e.to_string())?;
        let blobs = self
            .blobs()
            .list(Some(&prefix))
            .await
            .map_err(|e| e.to_string())?;
        let mut deleted = 0u64;
        for blob in blobs {
            match self.blobs().delete(&blob.key).await {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(deleted)
    }
}

/// The blob key `/readyz` asks the blob backend about (never written).
pub const READY_PROBE_KEY: &str = "readyz-probe";

/// Where devices reach the data plane, for enrolment codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolTarget {
    /// `host:port` devices dial.
    pub address: String,
    /// The server certificate's fingerprint.
    pub fingerprint: String,
}

/// Everything the API is built from.
pub struct ApiParts {
    /// The data plane's metadata store.
    pub meta: Arc<dyn MetaStore>,
    /// The control store.
    pub control: ControlStore,
    /// The running data plane.
    pub data_plane: Arc<dyn DataPlane>,
    /// The policy source the data plane uses (the API shows its answers).
    pub policy: ControlPolicy,
    /// Address and fingerprint for enrolment codes; `None`: tokens only.
    pub enrol: Option<EnrolTarget>,
    /// Rate limit per credential; `None`: none.
    pub rate_limit: Option<rate_limit::RateLimit>,
    /// Billing events of an hour are exported this long after it ends.
    pub billing_lateness: std::time::Duration,
}

impl std::fmt::Debug for ApiParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiParts")
            .field("enrol", &self.enrol)
            .finish_non_exhaustive()
    }
}

/// State shared by the handlers.
pub(crate) struct AppState {
    pub(crate) meta: Arc<dyn MetaStore>,
    pub(crate) control: ControlStore,
    pub(crate) data_plane: Arc<dyn DataPlane>,
    pub(crate) policy: ControlPolicy,
    pub(crate) enrol: Option<EnrolTarget>,
    pub(crate) in_flight: idempotency::InFlight,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) webhooks: Webhooks,
    pub(crate) billing_lateness: std::time::Duration,
}

/// The API's router: `/healthz`, `/readyz` and `/v1/...` (routes in `docs/CONTROL-PLANE.md`).
pub fn router(parts: ApiParts) -> Router {
    let state = Arc::new(AppState {
        webhooks: parts.policy.webhooks().clone(),
        meta: parts.meta,
        control: parts.control,
        data_plane: parts.data_plane,
        policy: parts.policy,
        enrol: parts.enrol,
        in_flight: idempotency::InFlight::default(),
        metrics: Arc::new(metrics::Metrics::default()),
        billing_lateness: parts.billing_lateness,
    });
    let metrics = Arc::clone(&state.metrics);
    let (routes, _) = openapi::routes().split_for_parts();
    let document = Arc::new(openapi_json());
    let router = routes
        .route(
            "/v1/openapi.json",
            get(move || openapi::serve(Arc::clone(&document))),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            idempotency::idempotency,
        ))
        .with_state(state);
    let router = match parts.rate_limit {
        Some(limit) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(rate_limit::RateLimiter::new(limit)),
            rate_limit::rate_limit,
        )),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        request_id::request_id,
    ))
}

/// The API's OpenAPI 3.1 document as served at `/v1/openapi.json`: generated from the handlers,
/// so it lists exactly the routes the router serves.
pub fn openapi_json() -> String {
    openapi::document().to_pretty_json().unwrap_or_else(|e| {
        format!("{{\"error\":\"the OpenAPI document did not serialize: {e}\"}}")
    })
}

/// The `(METHOD, path)` pairs of the OpenAPI document, sorted (for route-coverage tests).
pub fn openapi_operations() -> Vec<(String, String)> {
    openapi::operations(&openapi::document())
}

/// Serves `router` on `listener` until `cancel` fires, then finishes requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Setting up the control plane failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The control store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin token given by the operator is not acceptable.
    #[error(
        "the admin token from DOOZ_ADMIN_TOKEN is not acceptable: use 32 to 256 printable ASCII \
         characters without spaces, not starting with dzk_ (e.g. the output of \
         `openssl rand -base64 33`)"
    )]
    BadAdminToken,
}

/// Makes sure an admin token is set. With `from_env` (the operator's token), its hash replaces
/// the stored one and `None` is returned. Without it, a stored token is kept (`None`), and on
/// first start a new token is made, its hash stored, and the token returned, to be shown once.
pub async fn ensure_admin_token(
    control: &ControlStore,
    from_env: Option<&str>,
) -> Result<Option<Secret>, ControlError> {
    if let Some(text) = from_env {
        let secret = Secret::parse_admin(text).ok_or(ControlError::BadAdminToken)?;
        control.set_admin_token_hash(&secret.hash()).await?;
        return Ok(None);
    }
    if control.admin_token_hash()?.is_some() {
        return Ok(None);
    }
    let secret = Secret::generate(SecretKind::AdminToken)?;
    control.set_admin_token_hash(&secret.hash()).await?;
    Ok(Some(secret))
}

/// Makes a new admin token, replacing the stored one, and returns it (to be shown once): the
/// way back when the token is lost (`dooz-server admin reset-admin-token`).
pub async fn reset_admin_token(control: &ControlStore) -> Result<Secret, ControlError> {
    let secret = Secret::generate(SecretKind::AdminToken)?;
    control.set_admin_token_hash(&secret.hash()).await?;
    Ok(secret)
}

/// Makes a tenant and a first API key with `scopes` in it, as `POST /v1/tenants` and
/// `POST /v1/tenants/{t}/api_keys` would (`dooz-server admin tenant-create`). The key's secret
/// is returned, to be shown once.
pub async fn create_tenant_with_key(
    meta: &dyn MetaStore,
    control: &ControlStore,
    name: &str,
    scopes: Vec<model::Scope>,
) -> Result<(crate::store::TenantId, model::ApiKeyRecord, Secret), ControlError> {
    let now = crate::service::unix_now();
    let tenant = meta.create_tenant(name).await?;
    control.add_tenant(tenant.get(), now).await?;
    let secret = Secret::generate(SecretKind::ApiKey)?;
    let record = model::ApiKeyRecord {
        id: 0,
        tenant: tenant.get(),
        name: "bootstrap".to_owned(),
        scopes,
        created_at: now,
        expires_at: None,
        last_used: None,
        revoked_at: None,
    };
    let key = control.create_api_key(record, &secret.hash()).await?;
    let audit = |action: &str, target: String| model::AuditRecord {
        id: 0,
        at: now,
        tenant: tenant.get(),
        actor: "admin".to_owned(),
        action: action.to_owned(),
        target,
    };
    control.audit(audit("tenant.create", format!("tenant/{tenant}")))?;
    control.audit(audit("api_key.create", format!("api_key/{}", key.id)))?;
    control.flush().await?;
    Ok((tenant, key, secret))
}

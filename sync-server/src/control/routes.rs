//! The `/v1` handlers. Each checks the caller first ([`Caller::require`]), so a key of another
//! tenant is answered 404 before anything is looked up.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dooz_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use crate::control::AppState;
use crate::control::auth::{Caller, JsonBody, PathParams, QueryParams};
use crate::control::model::{
    ApiKeyRecord, AuditRecord, DeliveryRecord, DeliveryStatus, EVENT_TYPES, PlanLimits, PlanPrices,
    PlanRecord, Scope, SubscriptionRecord, SubscriptionStatus, WebhookEndpoint,
};
use crate::control::openapi::Problems;
use crate::control::problem::Problem;
use crate::control::secrets::{Secret, SecretKind};
use crate::control::store::Page;
use crate::policy::{Access, PolicySource as _};
use crate::service::{mint_enrolment_code, unix_now};
use crate::store::{AccountId, AccountRecord, DeviceRecord, TenantId, TenantRecord};

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_PAGE: u32 = 50;
/// Largest `limit`.
pub(crate) const MAX_PAGE: u32 = 200;
/// Longest enrolment-token lifetime (seconds): 365 days.
const MAX_TOKEN_LIFETIME: u64 = 365 * 24 * 3600;
/// Default billing period when none is given: 30 days.
const DEFAULT_PERIOD: u64 = 30 * 24 * 3600;

pub(crate) type ApiResult<T> = Result<T, Problem>;
pub(crate) type AppStateRef = State<Arc<AppState>>;

// --- pagination -------------------------------------------------------------------------------

/// `?limit&cursor`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page as the API returns it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PageOut<T> {
    data: Vec<T>,
    next_cursor: Option<String>,
}

fn page_args(limit: Option<u32>, cursor: Option<&str>) -> ApiResult<(usize, Option<u64>)> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::invalid(format!(
            "limit must be between 1 and {MAX_PAGE}, not {limit}"
        )));
    }
    let after = match cursor {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            Problem::bad_request("the cursor is not one this API gave out; pass next_cursor as is")
        })?),
    };
    Ok((usize::try_from(limit).unwrap_or(usize::MAX), after))
}

fn page_out<T, U>(page: Page<T>, f: impl FnMut(T) -> U) -> PageOut<U> {
    PageOut {
        data: page.data.into_iter().map(f).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    }
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// A response carrying a secret: 201, and `Cache-Control: no-store`.
fn created_secret<T: Serialize>(value: T) -> Response {
    no_store(created(value))
}

/// `response` with `Cache-Control: no-store` (it carries a secret).
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Problem::invalid(format!(
            "{what} name must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

// --- lookups ----------------------------------------------------------------------------------

impl AppState {
    pub(crate) fn audit(&self, caller: &Caller, tenant: u64, action: &str, target: String) {
        let event = AuditRecord {
            id: 0,
            at: unix_now(),
            tenant,
            actor: caller.actor(),
            action: action.to_owned(),
            target,
        };
        if let Err(e) = self.control.audit(event) {
            tracing::error!(error = %e, action, "could not write the audit log");
        }
    }

    pub(crate) async fn tenant(
        &self,
        caller: &Caller,
        id: u64,
        scope: Option<Scope>,
    ) -> ApiResult<TenantRecord> {
        match scope {
            Some(scope) => caller.require(id, scope)?,
            None => caller.require_tenant(id)?,
        }
        self.meta
            .tenant(TenantId::new(id))
            .await?
            .ok_or_else(|| Problem::not_found(format!("tenant {id}")))
    }

    async fn account(&self, tenant: u64, id: u64) -> ApiResult<AccountRecord> {
        match self.meta.account(AccountId::new(id)).await? {
            Some(account) if account.tenant.get() == tenant => Ok(account),
            _ => Err(Problem::not_found(format!("account {id}"))),
        }
    }

    fn plan(&self, tenant: u64, id: u64) -> ApiResult<PlanRecord> {
        self.control
            .plan(tenant, id)?
            .ok_or_else(|| Problem::not_found(format!("plan {id}")))
    }

    fn subscription(&self, tenant: u64, id: u64) -> ApiResult<SubscriptionRecord> {
        self.control
            .subscription(tenant, id)?
            .ok_or_else(|| Problem::not_found(format!("subscription {id}")))
    }
}

// --- health -----------------------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    operation_id = "healthz",
    responses((status = 200, description = "The process is up", body = serde_json::Value), Problems),
    security(())
)]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    operation_id = "readyz",
    responses((status = 200, description = "The metadata store and the blob backend answer", body = serde_json::Value), Problems),
    security(())
)]
pub(crate) async fn readyz(State(state): AppStateRef) -> ApiResult<Json<serde_json::Value>> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "{what} is not ready");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("the {what} does not answer; see the server log"),
        )
    };
    state
        .control
        .check()
        .map_err(|e| unavailable("control store", &e))?;
    state
        .meta
        .tenant(TenantId::new(0))
        .await
        .map_err(|e| unavailable("metadata store", &e))?;
    state
        .data_plane
        .check_blobs()
        .await
        .map_err(|e| unavailable("blob store", &e))?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    operation_id = "metrics_text",
    responses((status = 200, description = "Prometheus text exposition (operator only)", body = String, content_type = "text/plain; version=0.0.4"), Problems)
)]
pub(crate) async fn metrics_text(State(state): AppStateRef, caller: Caller) -> ApiResult<Response> {
    caller.require_operator()?;
    let mut text = state.metrics.render();
    if let Some(t) = state.data_plane.meter_totals() {
        use std::fmt::Write as _;
        for (name, help, value) in [
            (
                "dooz_metered_ingress_bytes_total",
                "Metered bytes received by the data plane (all tenants).",
                t.ingress_bytes,
            ),
            (
                "dooz_metered_egress_bytes_total",
                "Metered bytes sent by the data plane (all tenants).",
                t.egress_bytes,
            ),
            (
                "dooz_metered_requests_total",
                "Data-plane requests metered (all tenants).",
                t.requests,
            ),
            (
                "dooz_meter_batches_total",
                "Store writes carrying metered counts (group commits).",
                t.batches,
            ),
            (
                "dooz_meter_failures_total",
                "Metering writes that failed.",
                t.failures,
            ),
        ] {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        }
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such route; the API lives under /v1 (see docs/CONTROL-PLANE.md)",
    )
}

pub(crate) async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take this method; see the Allow header",
    )
}

// --- tenants ----------------------------------------------------------------------------------

/// Body of `POST /v1/tenants` and `POST .../accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantOut {
    id: u64,
    name: String,
}

impl From<TenantRecord> for TenantOut {
    fn from(t: TenantRecord) -> Self {
        Self {
            id: t.id.get(),
            name: t.name,
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    operation_id = "create_tenant",
    request_body = NameBody,
    responses((status = 201, body = TenantOut), Problems)
)]
pub(crate) async fn create_tenant(
    State(state): AppStateRef,
    caller: Caller,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult<Response> {
    caller.require_operator()?;
    check_name("tenant", &body.name)?;
    let id = state.meta.create_tenant(&body.name).await?;
    state.control.add_tenant(id.get(), unix_now()).await?;
    state.audit(&caller, id.get(), "tenant.create", format!("tenant/{id}"));
    Ok(created(TenantOut {
        id: id.get(),
        name: body.name,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    operation_id = "list_tenants",
    params(ListQuery),
    responses((status = 200, body = PageOut<TenantOut>), Problems)
)]
pub(crate) async fn list_tenants(
    State(state): AppStateRef,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<TenantOut>>> {
    caller.require_operator()?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    let page = state.control.tenants(after, limit)?;
    let mut data = Vec::with_capacity(page.data.len());
    for id in &page.data {
        if let Some(t) = state.meta.tenant(TenantId::new(*id)).await? {
            data.push(TenantOut::from(t));
        }
    }
    Ok(Json(PageOut {
        data,
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}",
    tag = "tenants",
    operation_id = "get_tenant",
    params(("tenant" = u64, Path, description = "Tenant id")),
    responses((status = 200, body = TenantOut), Problems)
)]
pub(crate) async fn get_tenant(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
) -> ApiResult<Json<TenantOut>> {
    Ok(Json(state.tenant(&caller, tenant, None).await?.into()))
}

// --- API keys ---------------------------------------------------------------------------------

/// Body of `POST .../api_keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedKey {
    #[serde(flatten)]
    key: ApiKeyRecord,
    /// The key itself, shown this once.
    secret: String,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/api_keys",
    tag = "api_keys",
    operation_id = "create_api_key",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), Problems)
)]
pub(crate) async fn create_api_key(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    check_name("key", &body.name)?;
    if body.scopes.is_empty() {
        return Err(Problem::invalid(
            "give the key at least one scope: admin, devices or usage:read",
        ));
    }
    let now = unix_now();
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(Problem::invalid("expires_at must be in the future"));
    }
    let secret = Secret::generate(SecretKind::ApiKey)?;
    let mut scopes = body.scopes;
    scopes.dedup();
    let record = ApiKeyRecord {
        id: 0,
        tenant,
        name: body.name,
        scopes,
        created_at: now,
        expires_at: body.expires_at,
        last_used: None,
        revoked_at: None,
    };
    let key = state.control.create_api_key(record, &secret.hash()).await?;
    state.audit(
        &caller,
        tenant,
        "api_key.create",
        format!("api_key/{}", key.id),
    );
    Ok(created_secret(CreatedKey {
        key,
        secret: secret.expose().to_owned(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/api_keys",
    tag = "api_keys",
    operation_id = "list_api_keys",
    params(("tenant" = u64, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = PageOut<ApiKeyRecord>), Problems)
)]
pub(crate) async fn list_api_keys(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<ApiKeyRecord>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    Ok(Json(page_out(
        state.control.api_keys(tenant, after, limit)?,
        |k| k,
    )))
}

fn api_key_of(state: &AppState, tenant: u64, id: u64) -> ApiResult<ApiKeyRecord> {
    state
        .control
        .api_key(tenant, id)?
        .ok_or_else(|| Problem::not_found(format!("API key {id}")))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/api_keys/{key}",
    tag = "api_keys",
    operation_id = "get_api_key",
    params(("tenant" = u64, Path, description = "Tenant id"), ("key" = u64, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyRecord), Problems)
)]
pub(crate) async fn get_api_key(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<ApiKeyRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    Ok(Json(api_key_of(&state, tenant, id)?))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/api_keys/{key}/revoke",
    tag = "api_keys",
    operation_id = "revoke_api_key",
    params(("tenant" = u64, Path, description = "Tenant id"), ("key" = u64, Path, description = "API key id")),
    responses((status = 200, body = ApiKeyRecord), Problems)
)]
pub(crate) async fn revoke_api_key(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<ApiKeyRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let mut key = api_key_of(&state, tenant, id)?;
    if key.revoked_at.is_none() {
        key.revoked_at = Some(unix_now());
        state.control.update_api_key(&key)?;
        state.control.flush().await?;
        state.audit(&caller, tenant, "api_key.revoke", format!("api_key/{id}"));
    }
    Ok(Json(key))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/api_keys/{key}",
    tag = "api_keys",
    operation_id = "delete_api_key",
    params(("tenant" = u64, Path, description = "Tenant id"), ("key" = u64, Path, description = "API key id")),
    responses((status = 204, description = "Deleted"), Problems)
)]
pub(crate) async fn delete_api_key(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<StatusCode> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    if !state.control.delete_api_key(tenant, id).await? {
        return Err(Problem::not_found(format!("API key {id}")));
    }
    state.audit(&caller, tenant, "api_key.delete", format!("api_key/{id}"));
    Ok(StatusCode::NO_CONTENT)
}

// --- accounts ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AccountOut {
    id: u64,
    tenant: u64,
    name: String,
    subscription: Option<u64>,
}

impl AppState {
    fn account_out(&self, a: AccountRecord) -> ApiResult<AccountOut> {
        let subscription = self
            .control
            .account_subscription(a.tenant.get(), a.id.get())?
            .map(|s| s.id);
        Ok(AccountOut {
            id: a.id.get(),
            tenant: a.tenant.get(),
            name: a.name,
            subscription,
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/accounts",
    tag = "accounts",
    operation_id = "create_account",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = NameBody,
    responses((status = 201, body = AccountOut), Problems)
)]
pub(crate) async fn create_account(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    check_name("account", &body.name)?;
    let id = state
        .meta
        .create_account(TenantId::new(tenant), &body.name)
        .await?;
    state
        .control
        .add_account(tenant, id.get(), unix_now())
        .await?;
    state.audit(&caller, tenant, "account.create", format!("account/{id}"));
    Ok(created(AccountOut {
        id: id.get(),
        tenant,
        name: body.name,
        subscription: None,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts",
    tag = "accounts",
    operation_id = "list_accounts",
    params(("tenant" = u64, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = PageOut<AccountOut>), Problems)
)]
pub(crate) async fn list_accounts(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<AccountOut>>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    let page = state.control.accounts(tenant, after, limit)?;
    let mut data = Vec::with_capacity(page.data.len());
    for id in &page.data {
        if let Some(a) = state.meta.account(AccountId::new(*id)).await? {
            data.push(state.account_out(a)?);
        }
    }
    Ok(Json(PageOut {
        data,
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts/{account}",
    tag = "accounts",
    operation_id = "get_account",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id")),
    responses((status = 200, body = AccountOut), Problems)
)]
pub(crate) async fn get_account(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<AccountOut>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let account = state.account(tenant, id).await?;
    Ok(Json(state.account_out(account)?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeletedAccount {
    id: u64,
    deleted: bool,
    devices_revoked: u64,
    vaults_deleted: u64,
    blobs_deleted: u64,
}

/// Deletes an account: its devices are revoked (live connections close), then its vaults'
/// blobs are deleted, then its metadata, then its control-plane records. Run again after a
/// failure, it carries on where it stopped.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/accounts/{account}",
    tag = "accounts",
    operation_id = "delete_account",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id")),
    responses((status = 200, body = DeletedAccount), Problems)
)]
pub(crate) async fn delete_account(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<DeletedAccount>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let account = state.account(tenant, id).await?;
    let _lock = state.control.lock().await;
    let mut devices_revoked = 0;
    for device in state.meta.list_devices(account.id).await? {
        if device.revoked_at.is_none() {
            state.data_plane.revoke_device(device.device).await?;
            devices_revoked += 1;
        }
    }
    let mut blobs_deleted = 0;
    let vaults = state.meta.list_vaults(account.id).await?;
    for vault in &vaults {
        blobs_deleted += state
            .data_plane
            .delete_vault_blobs(account.tenant, vault.vault)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, account = id, "could not delete a vault's blobs");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Unavailable",
                    "the blob store failed while deleting the account's blobs; nothing else was \
                     deleted yet beyond revoking its devices: try again",
                )
            })?;
    }
    state.meta.delete_account(account.id, unix_now()).await?;
    state.control.delete_account(tenant, id).await?;
    state.data_plane.policies_changed();
    state.audit(&caller, tenant, "account.delete", format!("account/{id}"));
    Ok(Json(DeletedAccount {
        id,
        deleted: true,
        devices_revoked,
        vaults_deleted: u64::try_from(vaults.len()).unwrap_or(u64::MAX),
        blobs_deleted,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageOut {
    stored_bytes: u64,
    devices: u64,
    vaults: u64,
    /// `full`, `read_only` or `blocked`: what the data plane allows now.
    access: &'static str,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts/{account}/usage",
    tag = "accounts",
    operation_id = "get_usage",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id")),
    responses((status = 200, body = UsageOut), Problems)
)]
pub(crate) async fn get_usage(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<UsageOut>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let account = state.account(tenant, id).await?;
    let usage = state.meta.account_usage(account.id).await?;
    let policy = state
        .policy
        .account_policy(account.tenant, account.id, unix_now())
        .await?;
    Ok(Json(UsageOut {
        stored_bytes: usage.stored_bytes,
        devices: usage.devices,
        vaults: usage.vaults,
        access: access_name(policy.access),
    }))
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Full => "full",
        Access::ReadOnly => "read_only",
        _ => "blocked",
    }
}

// --- enrolment tokens -------------------------------------------------------------------------

/// Body of `POST .../enrolment_tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    #[serde(default)]
    reusable: bool,
    /// Lifetime in seconds; default 3600.
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedToken {
    /// The enrolment token, shown this once.
    token: String,
    /// An enrolment code (`dooz enroll <code>`) holding the token, when the server knows the
    /// address devices dial.
    code: Option<String>,
    account: u64,
    reusable: bool,
    expires_at: u64,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/accounts/{account}/enrolment_tokens",
    tag = "devices",
    operation_id = "create_enrolment_token",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id")),
    request_body = CreateToken,
    responses((status = 201, body = CreatedToken), Problems)
)]
pub(crate) async fn create_enrolment_token(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Devices)).await?;
    let account = state.account(tenant, id).await?;
    let expires_in = body.expires_in.unwrap_or(3600);
    if expires_in == 0 || expires_in > MAX_TOKEN_LIFETIME {
        return Err(Problem::invalid(format!(
            "expires_in must be between 1 and {MAX_TOKEN_LIFETIME} seconds"
        )));
    }
    let expires_at = unix_now().saturating_add(expires_in);
    let (token, code) = match &state.enrol {
        Some(target) => {
            let code = mint_enrolment_code(
                state.meta.as_ref(),
                account.id,
                &target.address,
                &target.fingerprint,
                body.reusable,
                Duration::from_secs(expires_in),
            )
            .await
            .map_err(|e| Problem::internal(&e))?;
            (code.token.clone(), Some(code.to_string()))
        }
        None => {
            let token = state
                .meta
                .create_enrolment_token(account.id, expires_at, body.reusable)
                .await?;
            (token.expose().to_owned(), None)
        }
    };
    state.audit(
        &caller,
        tenant,
        "enrolment_token.create",
        format!("account/{id}"),
    );
    Ok(created_secret(CreatedToken {
        token,
        code,
        account: id,
        reusable: body.reusable,
        expires_at,
    }))
}

// --- devices ----------------------------------------------------------------------------------

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceOut {
    id: String,
    account: u64,
    name: String,
    created_at: u64,
    last_seen: u64,
    revoked_at: Option<u64>,
}

impl From<DeviceRecord> for DeviceOut {
    fn from(d: DeviceRecord) -> Self {
        Self {
            id: d.device.to_hex(),
            account: d.account.get(),
            name: d.name,
            created_at: d.created_at,
            last_seen: d.last_seen,
            revoked_at: d.revoked_at,
        }
    }
}

fn parse_device(text: &str) -> ApiResult<DeviceId> {
    blake3::Hash::from_hex(text.trim())
        .map(|h| DeviceId::from_bytes(*h.as_bytes()))
        .map_err(|_| Problem::not_found(format!("device {text:.70}")))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts/{account}/devices",
    tag = "devices",
    operation_id = "list_devices",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id"), ListQuery),
    responses((status = 200, body = PageOut<DeviceOut>), Problems)
)]
pub(crate) async fn list_devices(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<DeviceOut>>> {
    state.tenant(&caller, tenant, Some(Scope::Devices)).await?;
    let account = state.account(tenant, id).await?;
    let (limit, _) = page_args(q.limit, None)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(parse_device(c).map_err(|_| {
            Problem::bad_request("the cursor is not one this API gave out; pass next_cursor as is")
        })?),
    };
    let devices = state.meta.list_devices(account.id).await?;
    let mut rest = devices
        .into_iter()
        .filter(|d| after.is_none_or(|a| d.device > a));
    let data: Vec<DeviceOut> = rest.by_ref().take(limit).map(DeviceOut::from).collect();
    let next_cursor = if rest.next().is_some() {
        data.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(Json(PageOut { data, next_cursor }))
}

async fn device_of(
    state: &AppState,
    tenant: u64,
    account: u64,
    device: &str,
) -> ApiResult<DeviceRecord> {
    let id = parse_device(device)?;
    match state.meta.device(id).await? {
        Some(d) if d.tenant.get() == tenant && d.account.get() == account => Ok(d),
        _ => Err(Problem::not_found(format!("device {}", id.to_hex()))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts/{account}/devices/{device}",
    tag = "devices",
    operation_id = "get_device",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id"), ("device" = String, Path, description = "Device id (64 hex digits)")),
    responses((status = 200, body = DeviceOut), Problems)
)]
pub(crate) async fn get_device(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id, device)): PathParams<(u64, u64, String)>,
) -> ApiResult<Json<DeviceOut>> {
    state.tenant(&caller, tenant, Some(Scope::Devices)).await?;
    state.account(tenant, id).await?;
    Ok(Json(device_of(&state, tenant, id, &device).await?.into()))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/accounts/{account}/devices/{device}/revoke",
    tag = "devices",
    operation_id = "revoke_device",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id"), ("device" = String, Path, description = "Device id (64 hex digits)")),
    responses((status = 200, body = DeviceOut), Problems)
)]
pub(crate) async fn revoke_device(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id, device)): PathParams<(u64, u64, String)>,
) -> ApiResult<Json<DeviceOut>> {
    state.tenant(&caller, tenant, Some(Scope::Devices)).await?;
    state.account(tenant, id).await?;
    let record = device_of(&state, tenant, id, &device).await?;
    let revoked = state.data_plane.revoke_device(record.device).await?;
    state.audit(
        &caller,
        tenant,
        "device.revoke",
        format!("device/{}", record.device.to_hex()),
    );
    let out = DeviceOut::from(revoked);
    if record.revoked_at.is_none() {
        state
            .webhooks
            .emit_logged(
                tenant,
                "device.revoked",
                serde_json::json!({ "object": &out }),
            )
            .await;
        state.webhooks.usage_changed();
    }
    Ok(Json(out))
}

/// Body of `PATCH .../devices/{d}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameDevice {
    name: String,
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/accounts/{account}/devices/{device}",
    tag = "devices",
    operation_id = "rename_device",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id"), ("device" = String, Path, description = "Device id (64 hex digits)")),
    request_body = RenameDevice,
    responses((status = 200, body = DeviceOut), Problems)
)]
pub(crate) async fn rename_device(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id, device)): PathParams<(u64, u64, String)>,
    JsonBody(body): JsonBody<RenameDevice>,
) -> ApiResult<Json<DeviceOut>> {
    state.tenant(&caller, tenant, Some(Scope::Devices)).await?;
    state.account(tenant, id).await?;
    let record = device_of(&state, tenant, id, &device).await?;
    check_name("device", &body.name)?;
    let renamed = state.meta.rename_device(record.device, &body.name).await?;
    state.audit(
        &caller,
        tenant,
        "device.rename",
        format!("device/{}", record.device.to_hex()),
    );
    Ok(Json(renamed.into()))
}

// --- plans ------------------------------------------------------------------------------------

fn check_prices(prices: &PlanPrices) -> ApiResult<()> {
    let c = &prices.currency;
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(Problem::invalid(format!(
            "currency must be a lowercase ISO 4217 code such as usd, not {c:?}"
        )));
    }
    for (name, price) in [
        ("ingress_bytes", prices.ingress_bytes),
        ("egress_bytes", prices.egress_bytes),
        ("requests", prices.requests),
        ("stored_byte_hours", prices.stored_byte_hours),
    ] {
        if price.is_some_and(|p| p.unit == 0) {
            return Err(Problem::invalid(format!(
                "prices.{name}.unit must be at least 1"
            )));
        }
    }
    Ok(())
}

/// Body of `POST .../plans`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePlan {
    name: String,
    #[serde(default)]
    limits: PlanLimits,
    #[serde(default)]
    prices: Option<PlanPrices>,
}

/// Body of `PATCH .../plans/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatePlan {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    limits: Option<PlanLimits>,
    #[serde(default)]
    prices: Option<PlanPrices>,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/plans",
    tag = "plans",
    operation_id = "create_plan",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = CreatePlan,
    responses((status = 201, body = PlanRecord), Problems)
)]
pub(crate) async fn create_plan(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<CreatePlan>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    check_name("plan", &body.name)?;
    if let Some(prices) = &body.prices {
        check_prices(prices)?;
    }
    let plan = PlanRecord {
        id: 0,
        tenant,
        name: body.name,
        limits: body.limits,
        prices: body.prices,
        created_at: unix_now(),
    };
    let plan = state.control.create_plan(plan).await?;
    // A tenant's first plan changes the policy of its accounts without a subscription.
    state.data_plane.policies_changed();
    state.audit(&caller, tenant, "plan.create", format!("plan/{}", plan.id));
    Ok(created(plan))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/plans",
    tag = "plans",
    operation_id = "list_plans",
    params(("tenant" = u64, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = PageOut<PlanRecord>), Problems)
)]
pub(crate) async fn list_plans(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<PlanRecord>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    Ok(Json(page_out(
        state.control.plans(tenant, after, limit)?,
        |p| p,
    )))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/plans/{plan}",
    tag = "plans",
    operation_id = "get_plan",
    params(("tenant" = u64, Path, description = "Tenant id"), ("plan" = u64, Path, description = "Plan id")),
    responses((status = 200, body = PlanRecord), Problems)
)]
pub(crate) async fn get_plan(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<PlanRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    Ok(Json(state.plan(tenant, id)?))
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/plans/{plan}",
    tag = "plans",
    operation_id = "update_plan",
    params(("tenant" = u64, Path, description = "Tenant id"), ("plan" = u64, Path, description = "Plan id")),
    request_body = UpdatePlan,
    responses((status = 200, body = PlanRecord), Problems)
)]
pub(crate) async fn update_plan(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    JsonBody(body): JsonBody<UpdatePlan>,
) -> ApiResult<Json<PlanRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    let mut plan = state.plan(tenant, id)?;
    if let Some(name) = body.name {
        check_name("plan", &name)?;
        plan.name = name;
    }
    if let Some(limits) = body.limits {
        plan.limits = limits;
    }
    if let Some(prices) = body.prices {
        check_prices(&prices)?;
        plan.prices = Some(prices);
    }
    state.control.update_plan(&plan).await?;
    state.data_plane.policies_changed();
    state.audit(&caller, tenant, "plan.update", format!("plan/{id}"));
    state.webhooks.usage_changed();
    Ok(Json(plan))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/plans/{plan}",
    tag = "plans",
    operation_id = "delete_plan",
    params(("tenant" = u64, Path, description = "Tenant id"), ("plan" = u64, Path, description = "Plan id")),
    responses((status = 204, description = "Deleted"), Problems)
)]
pub(crate) async fn delete_plan(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<StatusCode> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    state.plan(tenant, id)?;
    if let Some(sub) = state.control.plan_subscription(tenant, id)? {
        return Err(Problem::conflict(
            "plan-in-use",
            "Plan in use",
            format!(
                "plan {id} is named by subscription {sub} (and maybe others, canceled ones \
                 included); move them to another plan first"
            ),
        ));
    }
    state.control.delete_plan(tenant, id).await?;
    // A tenant's last plan going changes the policy of accounts without a subscription.
    state.data_plane.policies_changed();
    state.audit(&caller, tenant, "plan.delete", format!("plan/{id}"));
    Ok(StatusCode::NO_CONTENT)
}

// --- subscriptions ----------------------------------------------------------------------------

/// Body of `POST .../subscriptions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    account: u64,
    plan: u64,
    #[serde(default)]
    status: Option<SubscriptionStatus>,
    #[serde(default)]
    current_period_start: Option<u64>,
    #[serde(default)]
    current_period_end: Option<u64>,
    #[serde(default)]
    trial_end: Option<u64>,
    #[serde(default)]
    cancel_at_period_end: bool,
}

/// Body of `PATCH .../subscriptions/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSubscription {
    #[serde(default)]
    status: Option<SubscriptionStatus>,
    #[serde(default)]
    plan: Option<u64>,
    #[serde(default)]
    current_period_start: Option<u64>,
    #[serde(default)]
    current_period_end: Option<u64>,
    #[serde(default)]
    trial_end: Option<u64>,
    #[serde(default)]
    cancel_at_period_end: Option<bool>,
}

fn check_period(start: u64, end: u64) -> ApiResult<()> {
    if end <= start {
        return Err(Problem::invalid(
            "current_period_end must be after current_period_start",
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/subscriptions",
    tag = "subscriptions",
    operation_id = "create_subscription",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = CreateSubscription,
    responses((status = 201, body = SubscriptionRecord), Problems)
)]
pub(crate) async fn create_subscription(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<CreateSubscription>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let status = body.status.unwrap_or(SubscriptionStatus::Active);
    if !status.is_initial() {
        return Err(Problem::invalid(format!(
            "a subscription starts as trialing or active, not {}",
            status.as_str()
        )));
    }
    if state.account(tenant, body.account).await.is_err() {
        return Err(Problem::invalid(format!(
            "there is no account {} in tenant {tenant}",
            body.account
        )));
    }
    if state.control.plan(tenant, body.plan)?.is_none() {
        return Err(Problem::invalid(format!(
            "there is no plan {} in tenant {tenant}",
            body.plan
        )));
    }
    let now = unix_now();
    let start = body.current_period_start.unwrap_or(now);
    let end = body
        .current_period_end
        .unwrap_or(start.saturating_add(DEFAULT_PERIOD));
    check_period(start, end)?;
    let _lock = state.control.lock().await;
    if let Some(existing) = state.control.account_subscription(tenant, body.account)?
        && existing.status != SubscriptionStatus::Canceled
    {
        return Err(Problem::conflict(
            "subscription-exists",
            "Subscription exists",
            format!(
                "account {} already has subscription {} ({}); change it with PATCH, or cancel it \
                 before making a new one",
                body.account,
                existing.id,
                existing.status.as_str()
            ),
        ));
    }
    let sub = SubscriptionRecord {
        id: 0,
        tenant,
        account: body.account,
        plan: body.plan,
        status,
        status_changed_at: now,
        current_period_start: start,
        current_period_end: end,
        trial_end: body.trial_end,
        cancel_at_period_end: body.cancel_at_period_end,
        created_at: now,
    };
    let sub = state.control.create_subscription(sub).await?;
    state.data_plane.policies_changed();
    state.audit(
        &caller,
        tenant,
        "subscription.create",
        format!("subscription/{}", sub.id),
    );
    state
        .webhooks
        .emit_logged(
            tenant,
            "subscription.created",
            serde_json::json!({ "object": &sub }),
        )
        .await;
    state.webhooks.usage_changed();
    Ok(created(sub))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/subscriptions",
    tag = "subscriptions",
    operation_id = "list_subscriptions",
    params(("tenant" = u64, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = PageOut<SubscriptionRecord>), Problems)
)]
pub(crate) async fn list_subscriptions(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<SubscriptionRecord>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    Ok(Json(page_out(
        state.control.subscriptions(tenant, after, limit)?,
        |s| s,
    )))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/subscriptions/{subscription}",
    tag = "subscriptions",
    operation_id = "get_subscription",
    params(("tenant" = u64, Path, description = "Tenant id"), ("subscription" = u64, Path, description = "Subscription id")),
    responses((status = 200, body = SubscriptionRecord), Problems)
)]
pub(crate) async fn get_subscription(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<SubscriptionRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    Ok(Json(state.subscription(tenant, id)?))
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/subscriptions/{subscription}",
    tag = "subscriptions",
    operation_id = "update_subscription",
    params(("tenant" = u64, Path, description = "Tenant id"), ("subscription" = u64, Path, description = "Subscription id")),
    request_body = UpdateSubscription,
    responses((status = 200, body = SubscriptionRecord), Problems)
)]
pub(crate) async fn update_subscription(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    JsonBody(body): JsonBody<UpdateSubscription>,
) -> ApiResult<Json<SubscriptionRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    let mut sub = state.subscription(tenant, id)?;
    let previous = sub.clone();
    if let Some(to) = body.status {
        let from = sub.status;
        if !from.can_become(to) {
            let allowed: Vec<&str> = from.next().iter().map(|s| s.as_str()).collect();
            let allowed = if allowed.is_empty() {
                "none: it is final; make a new subscription".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(Problem::conflict(
                "invalid-transition",
                "Invalid subscription transition",
                format!(
                    "subscription {id} cannot go from {} to {}; from {} it may go to: {allowed}",
                    from.as_str(),
                    to.as_str(),
                    from.as_str()
                ),
            ));
        }
        if from != to {
            sub.status = to;
            sub.status_changed_at = unix_now();
        }
    }
    if let Some(plan) = body.plan {
        if state.control.plan(tenant, plan)?.is_none() {
            return Err(Problem::invalid(format!(
                "there is no plan {plan} in tenant {tenant}"
            )));
        }
        sub.plan = plan;
    }
    let start = body
        .current_period_start
        .unwrap_or(sub.current_period_start);
    let end = body.current_period_end.unwrap_or(sub.current_period_end);
    check_period(start, end)?;
    sub.current_period_start = start;
    sub.current_period_end = end;
    if let Some(trial_end) = body.trial_end {
        sub.trial_end = Some(trial_end);
    }
    if let Some(cancel) = body.cancel_at_period_end {
        sub.cancel_at_period_end = cancel;
    }
    state.control.update_subscription(&sub).await?;
    state.data_plane.policies_changed();
    state.audit(
        &caller,
        tenant,
        "subscription.update",
        format!("subscription/{id}"),
    );
    if sub != previous {
        state
            .webhooks
            .emit_logged(
                tenant,
                "subscription.updated",
                serde_json::json!({ "object": &sub, "previous": &previous }),
            )
            .await;
        state.webhooks.usage_changed();
    }
    Ok(Json(sub))
}

// --- webhooks ---------------------------------------------------------------------------------

/// Body of `POST .../webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWebhook {
    url: String,
    #[serde(default)]
    events: Vec<String>,
}

/// Body of `PATCH .../webhooks/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateWebhook {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    disabled: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedWebhook {
    #[serde(flatten)]
    endpoint: WebhookEndpoint,
    /// The signing secret, shown this once.
    secret: String,
}

fn check_webhook_url(url: &str) -> ApiResult<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        Problem::invalid(format!(
            "url is not a URL ({e}); give an absolute http(s) URL"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || url.len() > 2048
    {
        return Err(Problem::invalid(
            "url must be an absolute http:// or https:// URL with a host, at most 2048 bytes",
        ));
    }
    Ok(())
}

fn check_events(events: &mut Vec<String>) -> ApiResult<()> {
    if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        return Err(Problem::invalid(format!(
            "unknown event type {bad:.64}; known: {} (an empty list: all)",
            EVENT_TYPES.join(", ")
        )));
    }
    events.sort();
    events.dedup();
    Ok(())
}

fn webhook_of(state: &AppState, tenant: u64, id: u64) -> ApiResult<WebhookEndpoint> {
    state
        .control
        .webhook(tenant, id)?
        .ok_or_else(|| Problem::not_found(format!("webhook endpoint {id}")))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook), Problems)
)]
pub(crate) async fn create_webhook(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(mut body): JsonBody<CreateWebhook>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    check_webhook_url(&body.url)?;
    check_events(&mut body.events)?;
    let secret = crate::control::webhooks::new_secret()?;
    let endpoint = WebhookEndpoint {
        id: 0,
        tenant,
        url: body.url,
        events: body.events,
        disabled: false,
        created_at: unix_now(),
    };
    let endpoint = state.control.create_webhook(endpoint, &secret).await?;
    state.audit(
        &caller,
        tenant,
        "webhook.create",
        format!("webhook/{}", endpoint.id),
    );
    Ok(created_secret(CreatedWebhook { endpoint, secret }))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(("tenant" = u64, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, body = PageOut<WebhookEndpoint>), Problems)
)]
pub(crate) async fn list_webhooks(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<WebhookEndpoint>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    Ok(Json(page_out(
        state.control.webhooks(tenant, after, limit)?,
        |w| w,
    )))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id")),
    responses((status = 200, body = WebhookEndpoint), Problems)
)]
pub(crate) async fn get_webhook(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<WebhookEndpoint>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    Ok(Json(webhook_of(&state, tenant, id)?))
}

#[utoipa::path(
    patch,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id")),
    request_body = UpdateWebhook,
    responses((status = 200, body = WebhookEndpoint), Problems)
)]
pub(crate) async fn update_webhook(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    JsonBody(body): JsonBody<UpdateWebhook>,
) -> ApiResult<Json<WebhookEndpoint>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    let mut endpoint = webhook_of(&state, tenant, id)?;
    if let Some(url) = body.url {
        check_webhook_url(&url)?;
        endpoint.url = url;
    }
    if let Some(mut events) = body.events {
        check_events(&mut events)?;
        endpoint.events = events;
    }
    if let Some(disabled) = body.disabled {
        endpoint.disabled = disabled;
    }
    state.control.update_webhook(&endpoint).await?;
    state.webhooks.wake();
    state.audit(&caller, tenant, "webhook.update", format!("webhook/{id}"));
    Ok(Json(endpoint))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id")),
    responses((status = 204, description = "Deleted"), Problems)
)]
pub(crate) async fn delete_webhook(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<StatusCode> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    webhook_of(&state, tenant, id)?;
    state.control.delete_webhook(tenant, id).await?;
    state.audit(&caller, tenant, "webhook.delete", format!("webhook/{id}"));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}/deliveries",
    tag = "webhooks",
    operation_id = "list_deliveries",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id"), ListQuery),
    responses((status = 200, body = PageOut<DeliveryRecord>), Problems)
)]
pub(crate) async fn list_deliveries(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<PageOut<DeliveryRecord>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    webhook_of(&state, tenant, id)?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    Ok(Json(page_out(
        state.control.deliveries(tenant, id, after, limit)?,
        |d| d,
    )))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}/deliveries/{delivery}",
    tag = "webhooks",
    operation_id = "get_delivery",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id"), ("delivery" = u64, Path, description = "Delivery id")),
    responses((status = 200, body = DeliveryRecord), Problems)
)]
pub(crate) async fn get_delivery(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id, delivery)): PathParams<(u64, u64, u64)>,
) -> ApiResult<Json<DeliveryRecord>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    webhook_of(&state, tenant, id)?;
    state
        .control
        .delivery(tenant, id, delivery)?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("delivery {delivery}")))
}

/// Body of `POST .../webhooks/{id}/rotate_secret`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateSecret {
    /// How long the current secret keeps signing beside the new one, in seconds: default 86400
    /// (24 hours), at most 604800 (7 days), 0 to stop using it at once.
    #[serde(default)]
    #[schema(maximum = 604800)]
    expire_current_after: Option<u64>,
}

/// The longest time a rotated-out webhook secret keeps signing: 7 days.
const MAX_SECRET_OVERLAP: u64 = 7 * 24 * 3600;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RotatedSecret {
    #[serde(flatten)]
    endpoint: WebhookEndpoint,
    /// The new signing secret, shown this once.
    secret: String,
    /// Until when (unix seconds) deliveries also carry a signature made with the previous
    /// secret; absent if it stopped at once.
    previous_secret_expires_at: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}/rotate_secret",
    tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id")),
    request_body = RotateSecret,
    responses((status = 200, body = RotatedSecret), Problems)
)]
/// Replaces an endpoint's signing secret. The current secret keeps signing beside the new one
/// (two `v1` signatures) for `expire_current_after` seconds, so a receiver can switch without
/// refusing an event.
pub(crate) async fn rotate_webhook_secret(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
    JsonBody(body): JsonBody<RotateSecret>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let overlap = body.expire_current_after.unwrap_or(24 * 3600);
    if overlap > MAX_SECRET_OVERLAP {
        return Err(Problem::invalid(format!(
            "expire_current_after is {overlap} s; at most {MAX_SECRET_OVERLAP} (7 days)"
        )));
    }
    let _lock = state.control.lock().await;
    let endpoint = webhook_of(&state, tenant, id)?;
    let secret = crate::control::webhooks::new_secret()?;
    let now = unix_now();
    let expires_at = now.saturating_add(overlap);
    state
        .control
        .rotate_webhook_secret(tenant, id, &secret, expires_at)
        .await?;
    state.audit(
        &caller,
        tenant,
        "webhook.rotate_secret",
        format!("webhook/{id}"),
    );
    Ok(no_store(
        Json(RotatedSecret {
            endpoint,
            secret,
            previous_secret_expires_at: (overlap > 0).then_some(expires_at),
        })
        .into_response(),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/webhooks/{webhook}/deliveries/{delivery}/redeliver",
    tag = "webhooks",
    operation_id = "redeliver",
    params(("tenant" = u64, Path, description = "Tenant id"), ("webhook" = u64, Path, description = "Webhook endpoint id"), ("delivery" = u64, Path, description = "Delivery id")),
    responses((status = 201, body = DeliveryRecord), Problems)
)]
/// Sends a delivered or failed delivery's event again: a new delivery with the same event id
/// and body (receivers deduplicate by the id) and attempts of its own. A delivery still
/// pending is refused with 409.
pub(crate) async fn redeliver(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id, delivery)): PathParams<(u64, u64, u64)>,
) -> ApiResult<Response> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let _lock = state.control.lock().await;
    webhook_of(&state, tenant, id)?;
    let original = state
        .control
        .delivery(tenant, id, delivery)?
        .ok_or_else(|| Problem::not_found(format!("delivery {delivery}")))?;
    if original.is_pending() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "delivery-pending",
            "Delivery still pending",
            format!(
                "delivery {delivery} is still being delivered (attempt {} so far); redeliver \
                 it once it has been delivered or has failed",
                original.attempts.len()
            ),
        ));
    }
    let mut copy = DeliveryRecord {
        id: 0,
        status: DeliveryStatus::Pending,
        attempts: Vec::new(),
        next_attempt_at_ms: Some(0),
        created_at: unix_now(),
        ..original
    };
    state.control.put_delivery(&mut copy)?;
    state.control.flush().await?;
    state.webhooks.wake();
    state.audit(
        &caller,
        tenant,
        "webhook.redeliver",
        format!("delivery/{delivery}"),
    );
    Ok(created(copy))
}

// --- audit ------------------------------------------------------------------------------------

/// `GET .../audit` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Exact action, e.g. `device.revoke`.
    action: Option<String>,
    /// Exact actor, e.g. `admin` or `key:3`.
    actor: Option<String>,
    /// Exact target, e.g. `subscription/7`.
    target: Option<String>,
    /// Events at or after this time (unix seconds).
    since: Option<u64>,
    /// Events before this time (unix seconds).
    until: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/audit",
    tag = "audit",
    operation_id = "list_audit",
    params(("tenant" = u64, Path, description = "Tenant id"), AuditQuery),
    responses((status = 200, body = PageOut<AuditRecord>), Problems)
)]
pub(crate) async fn list_audit(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<PageOut<AuditRecord>>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let (limit, after) = page_args(q.limit, q.cursor.as_deref())?;
    let page = state.control.audit_events(tenant, after, limit, |e| {
        q.action.as_ref().is_none_or(|a| *a == e.action)
            && q.actor.as_ref().is_none_or(|a| *a == e.actor)
            && q.target.as_ref().is_none_or(|t| *t == e.target)
            && q.since.is_none_or(|s| e.at >= s)
            && q.until.is_none_or(|u| e.at < u)
    })?;
    Ok(Json(page_out(page, |e| e)))
}

// --- export -----------------------------------------------------------------------------------

/// Every record of a page-walking lister.
fn all<T>(
    mut page: impl FnMut(Option<u64>) -> Result<Page<T>, crate::StoreError>,
) -> ApiResult<Vec<T>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let p = page(after)?;
        out.extend(p.data);
        match p.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ExportedAccount {
    #[serde(flatten)]
    account: AccountOut,
    devices: Vec<DeviceOut>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Export {
    tenant: TenantOut,
    accounts: Vec<ExportedAccount>,
    plans: Vec<PlanRecord>,
    subscriptions: Vec<SubscriptionRecord>,
    api_keys: Vec<ApiKeyRecord>,
    audit: Vec<AuditRecord>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/export",
    tag = "tenants",
    operation_id = "export",
    params(("tenant" = u64, Path, description = "Tenant id")),
    responses((status = 200, body = Export), Problems)
)]
pub(crate) async fn export(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
) -> ApiResult<Json<Export>> {
    let record = state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    let max = usize::try_from(MAX_PAGE).unwrap_or(200);
    let ids = all(|after| state.control.accounts(tenant, after, max))?;
    let mut accounts = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(account) = state.meta.account(AccountId::new(id)).await? else {
            continue;
        };
        let devices = state.meta.list_devices(account.id).await?;
        accounts.push(ExportedAccount {
            account: state.account_out(account)?,
            devices: devices.into_iter().map(DeviceOut::from).collect(),
        });
    }
    let export = Export {
        tenant: record.into(),
        accounts,
        plans: all(|after| state.control.plans(tenant, after, max))?,
        subscriptions: all(|after| state.control.subscriptions(tenant, after, max))?,
        api_keys: all(|after| state.control.api_keys(tenant, after, max))?,
        audit: all(|after| state.control.audit_events(tenant, after, max, |_| true))?,
    };
    state.audit(&caller, tenant, "tenant.export", format!("tenant/{tenant}"));
    Ok(Json(export))
}

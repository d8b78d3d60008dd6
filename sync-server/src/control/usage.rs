//! Metering on the control plane (docs/METERING.md): usage reports, the operator's export,
//! billing events, tenants' billing settings, invoice previews, entitlements and analytics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::control::auth::{Caller, JsonBody, PathParams, QueryParams};
use crate::control::model::{MeterPrice, Scope, TenantBilling};
use crate::control::openapi::Problems;
use crate::control::problem::Problem;
use crate::control::routes::{ApiResult, AppStateRef};
use crate::metering::{
    self, BillingEvent, BillingPage, GroupBy, MeteringError, StripeMeterEvent, UsageQuery,
    UsageRow, Window,
};
use crate::policy::{Access, PolicySource as _};
use crate::service::unix_now;
use crate::store::{AccountId, HOUR_SECS, TenantId};

impl From<MeteringError> for Problem {
    fn from(e: MeteringError) -> Self {
        match e {
            MeteringError::Invalid(m) => Problem::invalid(m),
            MeteringError::Store(e) => e.into(),
            #[allow(unreachable_patterns)]
            other => Problem::invalid(other.to_string()),
        }
    }
}

/// `?from&to&window&group_by&format` of a usage report.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    /// Start: unix seconds, a date (`2026-11-01`) or RFC 3339 in UTC; rounded down to the hour.
    /// Default: the start of the current month (UTC).
    from: Option<String>,
    /// End (excluded), as `from`; rounded up to the hour. Default: now.
    to: Option<String>,
    /// `hour` (default), `day` or `month`.
    #[param(inline)]
    window: Option<Window>,
    /// `account`, `vault` or `device`, or a comma-separated list of them (`device,vault`);
    /// default: one row per tenant and window.
    group_by: Option<String>,
    /// `json` (default) or `csv` (same columns).
    #[param(inline)]
    format: Option<Format>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Format {
    #[default]
    Json,
    Csv,
}

/// A usage report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageReport {
    /// The tenant, or none for the operator's all-tenant export.
    tenant: Option<u64>,
    /// Start (RFC 3339, on the hour).
    from: String,
    /// End, excluded (RFC 3339, on the hour).
    to: String,
    window: Window,
    /// The grouping, in column order.
    group_by: Vec<GroupBy>,
    /// The rows, by window, tenant and group key.
    rows: Vec<UsageRow>,
}

fn query_of(tenant: Option<u64>, p: &UsageParams, now: u64) -> ApiResult<UsageQuery> {
    Ok(metering::query(
        tenant.map(TenantId::new),
        p.from.as_deref(),
        p.to.as_deref(),
        p.window.unwrap_or_default(),
        p.group_by.as_deref(),
        now,
    )?)
}

fn month_start(now: u64) -> u64 {
    metering::window_of(Window::Month, now / HOUR_SECS).0
}

async fn usage_response(
    state: &crate::control::AppState,
    tenant: Option<u64>,
    p: &UsageParams,
) -> ApiResult<Response> {
    let now = unix_now();
    let query = query_of(tenant, p, now)?;
    let rows = metering::report(state.meta.as_ref(), &query, now).await?;
    if p.format == Some(Format::Csv) {
        let mut response = metering::to_csv(&rows, &query.group_by).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    Ok(Json(UsageReport {
        tenant,
        from: metering::format_time(query.from / HOUR_SECS * HOUR_SECS),
        to: metering::format_time(query.to.div_ceil(HOUR_SECS) * HOUR_SECS),
        window: query.window,
        group_by: query.group_by,
        rows,
    })
    .into_response())
}

/// The tenant's metered usage: traffic (bytes in and out, requests) and storage (peak and
/// byte-hours), per window and group.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/usage",
    tag = "usage",
    operation_id = "tenant_usage",
    params(("tenant" = u64, Path, description = "Tenant id"), UsageParams),
    responses(
        (status = 200, description = "The report", content(
            (UsageReport = "application/json"),
            (String = "text/csv")
        )),
        Problems
    )
)]
pub(crate) async fn tenant_usage(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(p): QueryParams<UsageParams>,
) -> ApiResult<Response> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    usage_response(&state, Some(tenant), &p).await
}

/// Every tenant's usage, for the operator.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    operation_id = "all_usage",
    params(UsageParams),
    responses(
        (status = 200, description = "The report", content(
            (UsageReport = "application/json"),
            (String = "text/csv")
        )),
        Problems
    )
)]
pub(crate) async fn all_usage(
    State(state): AppStateRef,
    caller: Caller,
    QueryParams(p): QueryParams<UsageParams>,
) -> ApiResult<Response> {
    caller.require_operator()?;
    usage_response(&state, None, &p).await
}

// --- billing events -----------------------------------------------------------------------------

/// `?after&limit&format` of the billing export.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    /// `next_cursor` of the previous page; none for the first.
    after: Option<String>,
    /// Events per page, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// `cloudevents` (default) or `stripe` (Stripe meter events; tenants without a Stripe
    /// customer are left out).
    #[param(inline)]
    format: Option<EventFormat>,
}

/// Billing event formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventFormat {
    #[default]
    Cloudevents,
    Stripe,
}

/// A page of billing events as Stripe meter events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StripePage {
    events: Vec<StripeMeterEvent>,
    next_cursor: String,
    has_more: bool,
    exportable_until: String,
}

/// Usage events of closed hours, for billing systems: CloudEvents with ids derived from tenant,
/// meter and hour, so that fetching twice gives the same events. Pages follow a cursor.
#[utoipa::path(
    get,
    path = "/v1/billing/events",
    tag = "usage",
    operation_id = "billing_events",
    params(EventParams),
    responses(
        (status = 200, description = "A page of events", content(
            (BillingPage = "application/json"),
            (StripePage = "application/x-stripe+json")
        )),
        Problems
    )
)]
pub(crate) async fn billing_events(
    State(state): AppStateRef,
    caller: Caller,
    QueryParams(p): QueryParams<EventParams>,
) -> ApiResult<Response> {
    caller.require_operator()?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let control = state.control.clone();
    let customer = move |tenant: u64| -> Option<String> {
        control
            .tenant_billing(tenant)
            .ok()
            .flatten()
            .and_then(|b| b.stripe_customer_id)
    };
    let page = metering::billing_events(
        state.meta.as_ref(),
        p.after.as_deref().unwrap_or_default(),
        usize::try_from(limit).unwrap_or(100),
        unix_now(),
        state.billing_lateness.as_secs(),
        &customer,
    )
    .await?;
    if p.format == Some(EventFormat::Stripe) {
        let mut response = Json(StripePage {
            events: page
                .events
                .iter()
                .filter_map(BillingEvent::to_stripe)
                .collect(),
            next_cursor: page.next_cursor,
            has_more: page.has_more,
            exportable_until: page.exportable_until,
        })
        .into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-stripe+json"),
        );
        return Ok(response);
    }
    Ok(Json(page).into_response())
}

// --- tenant billing settings ------------------------------------------------------------------

/// A tenant's billing settings.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/billing",
    tag = "usage",
    operation_id = "get_tenant_billing",
    params(("tenant" = u64, Path, description = "Tenant id")),
    responses((status = 200, body = TenantBilling), Problems)
)]
pub(crate) async fn get_tenant_billing(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
) -> ApiResult<Json<TenantBilling>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    Ok(Json(
        state.control.tenant_billing(tenant)?.unwrap_or_default(),
    ))
}

/// Sets a tenant's billing settings (the operator only: it decides whom it bills).
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/billing",
    tag = "usage",
    operation_id = "put_tenant_billing",
    params(("tenant" = u64, Path, description = "Tenant id")),
    request_body = TenantBilling,
    responses((status = 200, body = TenantBilling), Problems)
)]
pub(crate) async fn put_tenant_billing(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    JsonBody(body): JsonBody<TenantBilling>,
) -> ApiResult<Json<TenantBilling>> {
    state.tenant(&caller, tenant, Some(Scope::Admin)).await?;
    caller.require_operator()?;
    if let Some(id) = &body.stripe_customer_id
        && (id.is_empty()
            || id.len() > 255
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(Problem::invalid(
            "stripe_customer_id must be 1 to 255 letters, digits and underscores (cus_...)",
        ));
    }
    state.control.set_tenant_billing(tenant, &body).await?;
    state.audit(
        &caller,
        tenant,
        "tenant.billing",
        format!("tenant/{tenant}"),
    );
    Ok(Json(body))
}

// --- invoice preview ---------------------------------------------------------------------------

/// `?from&to` of an invoice preview.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeriodParams {
    /// Start (as for usage reports); default: the start of the current month.
    from: Option<String>,
    /// End, excluded; default: now.
    to: Option<String>,
}

/// One line of an invoice preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvoiceLine {
    /// `base` or a meter name.
    item: String,
    /// What was used in the period (0 for `base`).
    usage: u64,
    /// Included in the base fee.
    included: u64,
    /// Used beyond that.
    overage: u64,
    /// Meter units per price step.
    unit: u64,
    /// Price per step, minor units.
    unit_price: u64,
    /// Amount, minor units.
    amount: u64,
}

/// An account's invoice preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AccountInvoice {
    account: u64,
    plan: u64,
    currency: String,
    lines: Vec<InvoiceLine>,
    /// Sum of the lines, minor units.
    total: u64,
}

/// A tenant's invoice preview: each subscribed account on a priced plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvoicePreview {
    tenant: u64,
    from: String,
    to: String,
    accounts: Vec<AccountInvoice>,
    /// Totals by currency, minor units.
    totals: BTreeMap<String, u64>,
}

/// What the period would cost: each subscribed account's usage times its plan's prices (base
/// fee, included amounts, overage).
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/invoice_preview",
    tag = "usage",
    operation_id = "invoice_preview",
    params(("tenant" = u64, Path, description = "Tenant id"), PeriodParams),
    responses((status = 200, body = InvoicePreview), Problems)
)]
pub(crate) async fn invoice_preview(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(p): QueryParams<PeriodParams>,
) -> ApiResult<Json<InvoicePreview>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let now = unix_now();
    let params = UsageParams {
        from: p.from,
        to: p.to,
        window: Some(Window::Month),
        group_by: Some("account".to_owned()),
        format: None,
    };
    let mut query = query_of(Some(tenant), &params, now)?;
    // One window for the whole period: sum the month rows.
    query.window = Window::Month;
    let rows = metering::report(state.meta.as_ref(), &query, now).await?;
    let mut usage: BTreeMap<u64, [u64; 4]> = BTreeMap::new();
    for r in rows {
        let Some(account) = r.account.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        let u = usage.entry(account).or_default();
        u[0] = u[0].saturating_add(r.ingress_bytes);
        u[1] = u[1].saturating_add(r.egress_bytes);
        u[2] = u[2].saturating_add(r.requests);
        u[3] = u[3].saturating_add(r.stored_byte_hours);
    }
    let mut accounts = Vec::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for sub in all_subscriptions(&state, tenant)? {
        let Some(plan) = state.control.plan(tenant, sub.plan)? else {
            continue;
        };
        let Some(prices) = plan.prices else { continue };
        let used = usage.get(&sub.account).copied().unwrap_or_default();
        let mut lines = vec![InvoiceLine {
            item: "base".to_owned(),
            usage: 0,
            included: 0,
            overage: 0,
            unit: 1,
            unit_price: prices.base,
            amount: prices.base,
        }];
        let priced: [(&str, Option<MeterPrice>, u64); 4] = [
            ("ingress_bytes", prices.ingress_bytes, used[0]),
            ("egress_bytes", prices.egress_bytes, used[1]),
            ("requests", prices.requests, used[2]),
            ("stored_byte_hours", prices.stored_byte_hours, used[3]),
        ];
        for (item, price, value) in priced {
            let Some(price) = price else { continue };
            let (overage, amount) = price.charge(value);
            lines.push(InvoiceLine {
                item: item.to_owned(),
                usage: value,
                included: price.included,
                overage,
                unit: price.unit,
                unit_price: price.unit_price,
                amount,
            });
        }
        let total = lines.iter().fold(0u64, |t, l| t.saturating_add(l.amount));
        let sum = totals.entry(prices.currency.clone()).or_default();
        *sum = sum.saturating_add(total);
        accounts.push(AccountInvoice {
            account: sub.account,
            plan: plan.id,
            currency: prices.currency,
            lines,
            total,
        });
    }
    Ok(Json(InvoicePreview {
        tenant,
        from: metering::format_time(query.from / HOUR_SECS * HOUR_SECS),
        to: metering::format_time(query.to.div_ceil(HOUR_SECS) * HOUR_SECS),
        accounts,
        totals,
    }))
}

fn all_subscriptions(
    state: &crate::control::AppState,
    tenant: u64,
) -> ApiResult<Vec<crate::control::model::SubscriptionRecord>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = state.control.subscriptions(tenant, after, 200)?;
        out.extend(page.data);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

// --- entitlements ---------------------------------------------------------------------------

/// What an account may use of one resource, and how much it uses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Entitlement {
    /// Whether the account may use it now (access allows it and a hard limit is not reached).
    has_access: bool,
    /// Used now (storage, devices, vaults) or this calendar month (egress).
    usage: u64,
    /// The plan's limit, if any.
    limit: Option<u64>,
    /// Whether the limit is enforced (refused past it) or soft.
    hard: Option<bool>,
    /// Usage past the limit (0 when within it).
    overage: u64,
    /// When this was read (RFC 3339).
    as_of: String,
}

/// An account's entitlements.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Entitlements {
    account: u64,
    /// `full`, `read_only` or `blocked`.
    access: &'static str,
    storage_bytes: Entitlement,
    monthly_egress_bytes: Entitlement,
    devices: Entitlement,
    vaults: Entitlement,
}

/// What an account may use and uses, per resource: for apps to show limits and for billing.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/accounts/{account}/entitlements",
    tag = "usage",
    operation_id = "entitlements",
    params(("tenant" = u64, Path, description = "Tenant id"), ("account" = u64, Path, description = "Account id")),
    responses((status = 200, body = Entitlements), Problems)
)]
pub(crate) async fn entitlements(
    State(state): AppStateRef,
    caller: Caller,
    PathParams((tenant, id)): PathParams<(u64, u64)>,
) -> ApiResult<Json<Entitlements>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let account = match state.meta.account(AccountId::new(id)).await? {
        Some(a) if a.tenant.get() == tenant => a,
        _ => return Err(Problem::not_found(format!("account {id}"))),
    };
    let now = unix_now();
    let usage = state.meta.account_usage(account.id).await?;
    let policy = state
        .policy
        .account_policy(account.tenant, account.id, now)
        .await?;
    let egress = account_egress(&state, account.tenant, account.id, now).await?;
    let plan_limits = match state.control.account_subscription(tenant, id)? {
        Some(sub) => state
            .control
            .plan(tenant, sub.plan)?
            .map(|p| p.limits)
            .unwrap_or_default(),
        None => Default::default(),
    };
    let as_of = metering::format_time(now);
    let make = |used: u64, limit: Option<crate::control::model::LimitSpec>, write: bool| {
        let allowed = match policy.access {
            Access::Full => true,
            Access::ReadOnly => !write,
            _ => false,
        };
        let within = limit.is_none_or(|l| !l.hard || used < l.max);
        Entitlement {
            has_access: allowed && within,
            usage: used,
            limit: limit.map(|l| l.max),
            hard: limit.map(|l| l.hard),
            overage: limit.map_or(0, |l| used.saturating_sub(l.max)),
            as_of: as_of.clone(),
        }
    };
    Ok(Json(Entitlements {
        account: id,
        access: match policy.access {
            Access::Full => "full",
            Access::ReadOnly => "read_only",
            _ => "blocked",
        },
        storage_bytes: make(usage.stored_bytes, plan_limits.storage_bytes, true),
        monthly_egress_bytes: make(egress, plan_limits.monthly_egress_bytes, false),
        devices: make(usage.devices, plan_limits.devices, true),
        vaults: make(usage.vaults, plan_limits.vaults, true),
    }))
}

/// The account's egress bytes this calendar month (UTC).
pub(crate) async fn account_egress(
    state: &crate::control::AppState,
    tenant: TenantId,
    account: AccountId,
    now: u64,
) -> ApiResult<u64> {
    let from = month_start(now) / HOUR_SECS;
    let to = now / HOUR_SECS + 1;
    let rows = state.meta.traffic(Some(tenant), from..to).await?;
    Ok(rows
        .iter()
        .filter(|(k, _)| k.account == account)
        .fold(0u64, |t, (_, c)| t.saturating_add(c.egress_bytes)))
}

// --- analytics ---------------------------------------------------------------------------------

/// `?days` of analytics.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalyticsParams {
    /// Days back, 1 to 90 (default 30).
    days: Option<u32>,
}

/// A device's activity.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeviceActivity {
    device: String,
    account: u64,
    name: String,
    revoked: bool,
    /// When it last connected (RFC 3339).
    last_seen: String,
    /// Start of the last hour it sent a request in, within the period (RFC 3339).
    last_active: Option<String>,
    /// Bytes it sent in the period.
    ingress_bytes: u64,
    /// Bytes it received in the period.
    egress_bytes: u64,
}

/// A day's traffic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DayTraffic {
    day: String,
    ingress_bytes: u64,
    egress_bytes: u64,
    requests: u64,
}

/// A tenant's sync analytics.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Analytics {
    tenant: u64,
    days: u32,
    /// Devices (not revoked) that sent a request in the period.
    active_devices: u64,
    /// Devices not revoked.
    devices: u64,
    /// Every device with its activity.
    by_device: Vec<DeviceActivity>,
    /// Traffic per day, oldest first.
    by_day: Vec<DayTraffic>,
}

/// Sync analytics of a tenant: active devices, each device's last activity, bytes per day.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/analytics",
    tag = "usage",
    operation_id = "analytics",
    params(("tenant" = u64, Path, description = "Tenant id"), AnalyticsParams),
    responses((status = 200, body = Analytics), Problems)
)]
pub(crate) async fn analytics(
    State(state): AppStateRef,
    caller: Caller,
    PathParams(tenant): PathParams<u64>,
    QueryParams(p): QueryParams<AnalyticsParams>,
) -> ApiResult<Json<Analytics>> {
    state
        .tenant(&caller, tenant, Some(Scope::UsageRead))
        .await?;
    let days = p.days.unwrap_or(30);
    if !(1..=90).contains(&days) {
        return Err(Problem::invalid(format!(
            "days must be between 1 and 90, not {days}"
        )));
    }
    let now = unix_now();
    let to = now / HOUR_SECS + 1;
    let from = (now / 86_400 + 1).saturating_sub(u64::from(days)) * 24;
    let rows = state
        .meta
        .traffic(Some(TenantId::new(tenant)), from..to)
        .await?;
    let mut per_device: BTreeMap<[u8; 32], (u64, u64, u64)> = BTreeMap::new();
    let mut per_day: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for (k, c) in &rows {
        if let Some(d) = k.device {
            let e = per_device.entry(*d.as_bytes()).or_default();
            e.0 = e.0.max(k.hour);
            e.1 = e.1.saturating_add(c.ingress_bytes);
            e.2 = e.2.saturating_add(c.egress_bytes);
        }
        let e = per_day.entry(k.hour / 24).or_default();
        e.0 = e.0.saturating_add(c.ingress_bytes);
        e.1 = e.1.saturating_add(c.egress_bytes);
        e.2 = e.2.saturating_add(c.requests);
    }
    let mut by_device = Vec::new();
    let (mut devices, mut active) = (0u64, 0u64);
    let mut after = None;
    loop {
        let page = state.control.accounts(tenant, after, 200)?;
        for account in &page.data {
            for d in state.meta.list_devices(AccountId::new(*account)).await? {
                let activity = per_device.get(d.device.as_bytes()).copied();
                if !d.is_revoked() {
                    devices += 1;
                    if activity.is_some() {
                        active += 1;
                    }
                }
                by_device.push(DeviceActivity {
                    device: d.device.to_hex(),
                    account: *account,
                    revoked: d.is_revoked(),
                    name: d.name,
                    last_seen: metering::format_time(d.last_seen),
                    last_active: activity.map(|a| metering::format_time(a.0 * HOUR_SECS)),
                    ingress_bytes: activity.map_or(0, |a| a.1),
                    egress_bytes: activity.map_or(0, |a| a.2),
                });
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let by_day = per_day
        .into_iter()
        .map(|(day, (i, e, r))| DayTraffic {
            day: metering::format_time(day * 86_400),
            ingress_bytes: i,
            egress_bytes: e,
            requests: r,
        })
        .collect();
    Ok(Json(Analytics {
        tenant,
        days,
        active_devices: active,
        devices,
        by_device,
        by_day,
    }))
}

//! Usage reports and billing events, from the store's traffic counters and storage gauges
//! (docs/METERING.md).
//!
//! - [`report`] aggregates hours into windows (hour, day or calendar month, UTC), grouped by
//!   account, vault or device, as rows with the columns of [`UsageRow`]; [`to_csv`] writes them
//!   with the same columns as the JSON.
//! - [`billing_events`] turns closed hours into CloudEvents, one per tenant, meter and hour, with
//!   an id derived from those three: exporting twice gives the same ids.
//! - [`parse_time`] and [`format_time`] read and write the times these use (RFC 3339 in UTC,
//!   a date, or unix seconds).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dooz_protocol::{DeviceId, VaultId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::{HOUR_SECS, MetaStore, StoreError, TenantId};

/// A report or export request that cannot be answered as asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MeteringError {
    /// A parameter is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How rows are windowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// One row per hour.
    #[default]
    Hour,
    /// One row per UTC day.
    Day,
    /// One row per UTC calendar month.
    Month,
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            "month" => Ok(Self::Month),
            other => Err(format!("{other:?} is not a window: use hour, day or month")),
        }
    }
}

/// What rows are grouped by, besides the tenant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One row per account.
    Account,
    /// One row per vault.
    Vault,
    /// One row per device (storage belongs to no device: it is in the row without one).
    Device,
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "account" => Ok(Self::Account),
            "vault" => Ok(Self::Vault),
            "device" => Ok(Self::Device),
            other => Err(format!(
                "{other:?} is not a grouping: use account, vault or device"
            )),
        }
    }
}

impl GroupBy {
    /// Reads a comma-separated list (`device,vault`), in column order, each once.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            out.push(part.parse::<Self>()?);
        }
        if out.is_empty() {
            return Err(format!(
                "{text:?} names no grouping: use account, vault or device, or a list of them"
            ));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The column the group key is written in.
    pub fn column(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Vault => "vault",
            Self::Device => "device",
        }
    }
}

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// One tenant, or all (`None`, the operator's export).
    pub tenant: Option<TenantId>,
    /// Start (unix seconds), rounded down to the hour.
    pub from: u64,
    /// End (unix seconds, excluded), rounded up to the hour.
    pub to: u64,
    /// The windows.
    pub window: Window,
    /// The grouping, in column order (account, vault, device); empty: one row per tenant and
    /// window.
    pub group_by: Vec<GroupBy>,
}

/// Most hours one report may span (about 13 months).
pub const MAX_REPORT_HOURS: u64 = 24 * 400;

/// One row of a usage report: the same columns in JSON and CSV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// Start of the window (RFC 3339, UTC), clipped to the report's `from`.
    pub window_start: String,
    /// End of the window (excluded), clipped to the report's `to`.
    pub window_end: String,
    /// The tenant id.
    pub tenant: u64,
    /// The account id, when grouped by account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The vault id (hex), when grouped by vault; empty for requests that named no vault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// The device id (hex), when grouped by device; empty for storage, which no device owns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Bytes received: request frames and the chunk bodies stored.
    pub ingress_bytes: u64,
    /// Bytes sent: answer frames, chunk bodies and change notifications.
    pub egress_bytes: u64,
    /// Requests answered.
    pub requests: u64,
    /// The most sealed bytes stored during the window (for a group of vaults, the sum of each
    /// vault's peak).
    pub stored_bytes_max: u64,
    /// Stored bytes integrated over the window, in byte-hours (rounded down).
    pub stored_byte_hours: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    ingress: u64,
    egress: u64,
    requests: u64,
    stored_max: u64,
    byte_seconds: u128,
}

/// The hour range a query covers.
fn hours_of(query: &UsageQuery) -> Result<std::ops::Range<u64>, MeteringError> {
    let from = query.from / HOUR_SECS;
    let to = query.to.div_ceil(HOUR_SECS);
    if to <= from {
        return Err(MeteringError::Invalid(format!(
            "`to` ({}) must be after `from` ({})",
            format_time(query.to),
            format_time(query.from)
        )));
    }
    if to - from > MAX_REPORT_HOURS {
        return Err(MeteringError::Invalid(format!(
            "a report spans at most {} days; this one spans {} hours: ask for it in parts",
            MAX_REPORT_HOURS / 24,
            to - from
        )));
    }
    Ok(from..to)
}

/// The window (start, end in unix seconds) holding `hour`.
pub fn window_of(window: Window, hour: u64) -> (u64, u64) {
    let t = hour * HOUR_SECS;
    match window {
        Window::Hour => (t, t + HOUR_SECS),
        Window::Day => {
            let start = t - t % 86_400;
            (start, start + 86_400)
        }
        Window::Month => {
            let (y, m, _) = civil_from_days(t / 86_400);
            let start = days_from_civil(y, m, 1) * 86_400;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (start, days_from_civil(ny, nm, 1) * 86_400)
        }
    }
}

type Group = (Option<String>, Option<String>, Option<String>);
type RowKey = (u64, u64, Group);

/// The usage report of `query`, rows ordered by window, tenant and group key. Rows with nothing
/// in them are left out. `now` (unix seconds) ends the current hour's storage.
pub async fn report(
    store: &dyn MetaStore,
    query: &UsageQuery,
    now: u64,
) -> Result<Vec<UsageRow>, MeteringError> {
    let hours = hours_of(query)?;
    let clip_start = hours.start * HOUR_SECS;
    let clip_end = hours.end * HOUR_SECS;
    let by = |g: GroupBy| query.group_by.contains(&g);
    let group = |account: u64, vault: Option<VaultId>, device: Option<DeviceId>| -> Group {
        (
            by(GroupBy::Account).then(|| account.to_string()),
            by(GroupBy::Vault).then(|| vault.map(|v| v.to_hex()).unwrap_or_default()),
            by(GroupBy::Device).then(|| device.map(|d| d.to_hex()).unwrap_or_default()),
        )
    };
    let mut rows: BTreeMap<RowKey, Acc> = BTreeMap::new();
    for (key, counts) in store.traffic(query.tenant, hours.clone()).await? {
        let (start, _) = window_of(query.window, key.hour);
        let g = group(key.account.get(), key.vault, key.device);
        let acc = rows.entry((start, key.tenant.get(), g)).or_default();
        acc.ingress = acc.ingress.saturating_add(counts.ingress_bytes);
        acc.egress = acc.egress.saturating_add(counts.egress_bytes);
        acc.requests = acc.requests.saturating_add(counts.requests);
    }
    // Storage: each vault's peak over the window, then summed over the group.
    let mut peaks: BTreeMap<(RowKey, VaultId), u64> = BTreeMap::new();
    for h in store.storage_hours(query.tenant, hours, now).await? {
        let (start, _) = window_of(query.window, h.hour);
        let g = group(h.account.get(), Some(h.vault), None);
        let key = (start, h.tenant.get(), g);
        let peak = peaks.entry((key.clone(), h.vault)).or_default();
        *peak = (*peak).max(h.max_bytes);
        let acc = rows.entry(key).or_default();
        acc.byte_seconds = acc.byte_seconds.saturating_add(h.byte_seconds);
    }
    for ((key, _), peak) in peaks {
        let acc = rows.entry(key).or_default();
        acc.stored_max = acc.stored_max.saturating_add(peak);
    }
    let mut out = Vec::with_capacity(rows.len());
    for ((start, tenant, (account, vault, device)), acc) in rows {
        let (_, end) = window_of(query.window, start / HOUR_SECS);
        out.push(UsageRow {
            window_start: format_time(start.max(clip_start)),
            window_end: format_time(end.min(clip_end)),
            tenant,
            account,
            vault,
            device,
            ingress_bytes: acc.ingress,
            egress_bytes: acc.egress,
            requests: acc.requests,
            stored_bytes_max: acc.stored_max,
            stored_byte_hours: u64::try_from(acc.byte_seconds / u128::from(HOUR_SECS))
                .unwrap_or(u64::MAX),
        });
    }
    Ok(out)
}

/// The CSV of a report: a header line, then one line per row, with the JSON's columns in the
/// same order (group columns only when grouped by them).
pub fn to_csv(rows: &[UsageRow], group_by: &[GroupBy]) -> String {
    let mut out = String::from("window_start,window_end,tenant");
    let mut groups = group_by.to_vec();
    groups.sort();
    groups.dedup();
    for g in &groups {
        out.push(',');
        out.push_str(g.column());
    }
    out.push_str(",ingress_bytes,egress_bytes,requests,stored_bytes_max,stored_byte_hours\n");
    for r in rows {
        let _ = write!(out, "{},{},{}", r.window_start, r.window_end, r.tenant);
        for g in &groups {
            let value = match g {
                GroupBy::Account => r.account.as_deref(),
                GroupBy::Vault => r.vault.as_deref(),
                GroupBy::Device => r.device.as_deref(),
            };
            // Group keys are digits or hex: nothing to quote.
            let _ = write!(out, ",{}", value.unwrap_or_default());
        }
        let _ = writeln!(
            out,
            ",{},{},{},{},{}",
            r.ingress_bytes, r.egress_bytes, r.requests, r.stored_bytes_max, r.stored_byte_hours
        );
    }
    out
}

/// A report as the command line asks for it (`dooz-server usage`), strings as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderRequest {
    /// The tenant (id or name); `None`: every tenant.
    pub tenant: Option<String>,
    /// Start, as [`parse_time`] reads it; default: the start of the current month.
    pub from: Option<String>,
    /// End, excluded; default: now.
    pub to: Option<String>,
    /// `hour`, `day` or `month`.
    pub window: Option<String>,
    /// `account`, `vault` or `device`, or a comma-separated list of them.
    pub group_by: Option<String>,
    /// `csv` or `json` (default).
    pub format: Option<String>,
}

/// A report's query from its parameters as given: `from` (default: the start of the current
/// month) and `to` (default: `now`) as [`parse_time`] reads them, `group_by` as
/// [`GroupBy::parse_list`] does.
pub fn query(
    tenant: Option<TenantId>,
    from: Option<&str>,
    to: Option<&str>,
    window: Window,
    group_by: Option<&str>,
    now: u64,
) -> Result<UsageQuery, MeteringError> {
    let from = match from {
        Some(t) => parse_time(t)?,
        None => window_of(Window::Month, now / HOUR_SECS).0,
    };
    let to = match to {
        Some(t) => parse_time(t)?,
        None => now.max(from.saturating_add(1)),
    };
    let group_by = match group_by {
        Some(g) => GroupBy::parse_list(g).map_err(MeteringError::Invalid)?,
        None => Vec::new(),
    };
    Ok(UsageQuery {
        tenant,
        from,
        to,
        window,
        group_by,
    })
}

/// Renders a report as CSV or as the JSON of `GET /v1/tenants/{id}/usage` (rows only).
pub async fn render(
    store: &dyn MetaStore,
    request: &RenderRequest,
    now: u64,
) -> Result<String, MeteringError> {
    let tenant = match request.tenant.as_deref() {
        None => None,
        Some(t) => match t.parse::<u64>() {
            Ok(id) if store.tenant(TenantId::new(id)).await?.is_some() => Some(TenantId::new(id)),
            _ => Some(
                store
                    .tenant_by_name(t)
                    .await?
                    .ok_or_else(|| {
                        MeteringError::Invalid(format!("no tenant {t:?} on this server"))
                    })?
                    .id,
            ),
        },
    };
    let window = match request.window.as_deref() {
        Some(w) => w.parse().map_err(MeteringError::Invalid)?,
        None => Window::Hour,
    };
    let query = query(
        tenant,
        request.from.as_deref(),
        request.to.as_deref(),
        window,
        request.group_by.as_deref(),
        now,
    )?;
    let rows = report(store, &query, now).await?;
    match request.format.as_deref() {
        Some("csv") => Ok(to_csv(&rows, &query.group_by)),
        None | Some("json") => serde_json::to_string_pretty(&rows)
            .map_err(|e| MeteringError::Invalid(format!("could not write the report: {e}"))),
        Some(other) => Err(MeteringError::Invalid(format!(
            "{other:?} is not a format: use csv or json"
        ))),
    }
}

// --- billing events ----------------------------------------------------------------------------

/// The meters billing events carry, in the order events of one hour and tenant are listed.
pub const METERS: [&str; 4] = [
    "ingress_bytes",
    "egress_bytes",
    "requests",
    "stored_byte_hours",
];

/// A usage event for billing: a CloudEvents 1.0 envelope (structured JSON mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BillingEvent {
    /// Always `1.0`.
    pub specversion: &'static str,
    /// Derived from tenant, meter and window: the same event always has the same id.
    pub id: String,
    /// `dooz-server`.
    pub source: &'static str,
    /// `com.dooz.usage.<meter>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `tenants/<id>`.
    pub subject: String,
    /// The window's end (RFC 3339).
    pub time: String,
    /// `application/json`.
    pub datacontenttype: &'static str,
    /// What was used.
    pub data: BillingData,
}

/// The data of a [`BillingEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BillingData {
    /// The tenant id.
    pub tenant: u64,
    /// The tenant's Stripe customer, if one was set.
    pub stripe_customer_id: Option<String>,
    /// One of [`METERS`].
    pub meter: String,
    /// Start of the window (RFC 3339).
    pub window_start: String,
    /// End of the window, excluded (RFC 3339).
    pub window_end: String,
    /// Unix seconds of `window_start` (Stripe's `timestamp`).
    pub timestamp: u64,
    /// The amount, in the meter's unit.
    pub value: u64,
}

/// A page of billing events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BillingPage {
    /// The events, by hour, tenant and meter.
    pub events: Vec<BillingEvent>,
    /// Pass it as `after` to get the events after these (also when `events` is empty: it then
    /// is the cursor given).
    pub next_cursor: String,
    /// Whether more events could be exported now.
    pub has_more: bool,
    /// The first hour not exportable yet: events start only after their hour has ended and the
    /// lateness bound has passed (RFC 3339).
    pub exportable_until: String,
}

/// Where a consumer stands: after the event of this hour, tenant and meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    hour: u64,
    tenant: u64,
    meter: usize,
}

impl Cursor {
    fn parse(text: &str) -> Result<Option<Self>, MeteringError> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || {
            MeteringError::Invalid(
                "the cursor is not one this server gave out; pass next_cursor as is".to_owned(),
            )
        };
        let mut parts = text.strip_prefix("c1.").ok_or_else(bad)?.split('.');
        let mut next = || -> Result<u64, MeteringError> {
            parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let (hour, tenant, meter) = (next()?, next()?, next()?);
        let meter = usize::try_from(meter)
            .ok()
            .filter(|m| *m < METERS.len())
            .ok_or_else(bad)?;
        Ok(Some(Self {
            hour,
            tenant,
            meter,
        }))
    }

    fn format(self) -> String {
        format!("c1.{}.{}.{}", self.hour, self.tenant, self.meter)
    }
}

/// The id of the event of `tenant`, `meter` and the hour starting at `start` (unix seconds):
/// the first 16 bytes of a BLAKE3 hash of the three, in hex.
pub fn event_id(tenant: u64, meter: &str, start: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"dooz usage event v1\0");
    h.update(&tenant.to_be_bytes());
    h.update(meter.as_bytes());
    h.update(&[0]);
    h.update(&start.to_be_bytes());
    hex(h.finalize().as_bytes().get(..16).unwrap_or_default())
}

/// The billing events after `after` (a cursor from an earlier page, or empty for the first), at
/// most `limit`. Only hours that ended at least `lateness` seconds before `now` are exported;
/// `customer` gives a tenant's Stripe customer id. Events of zero are not made.
pub async fn billing_events(
    store: &dyn MetaStore,
    after: &str,
    limit: usize,
    now: u64,
    lateness: u64,
    customer: &(dyn Fn(u64) -> Option<String> + Sync),
) -> Result<BillingPage, MeteringError> {
    let cursor = Cursor::parse(after)?;
    let until = now.saturating_sub(lateness) / HOUR_SECS;
    let start = cursor.map_or(0, |c| c.hour);
    let mut events = Vec::new();
    let mut last = cursor;
    let mut has_more = false;
    if start < until {
        // Each tenant's total per hour and meter.
        let mut totals: BTreeMap<(u64, u64), Acc> = BTreeMap::new();
        for (key, counts) in store.traffic(None, start..until).await? {
            let acc = totals.entry((key.hour, key.tenant.get())).or_default();
            acc.ingress = acc.ingress.saturating_add(counts.ingress_bytes);
            acc.egress = acc.egress.saturating_add(counts.egress_bytes);
            acc.requests = acc.requests.saturating_add(counts.requests);
        }
        for h in store.storage_hours(None, start..until, now).await? {
            let acc = totals.entry((h.hour, h.tenant.get())).or_default();
            acc.byte_seconds = acc.byte_seconds.saturating_add(h.byte_seconds);
        }
        'hours: for ((hour, tenant), acc) in totals {
            let values = [
                acc.ingress,
                acc.egress,
                acc.requests,
                u64::try_from(acc.byte_seconds / u128::from(HOUR_SECS)).unwrap_or(u64::MAX),
            ];
            for (meter, value) in values.into_iter().enumerate() {
                let here = Cursor {
                    hour,
                    tenant,
                    meter,
                };
                if value == 0 || cursor.is_some_and(|c| here <= c) {
                    continue;
                }
                if events.len() == limit {
                    has_more = true;
                    break 'hours;
                }
                events.push(event(tenant, meter, hour, value, customer(tenant)));
                last = Some(here);
            }
        }
    }
    Ok(BillingPage {
        events,
        next_cursor: last.map(Cursor::format).unwrap_or_default(),
        has_more,
        exportable_until: format_time(until * HOUR_SECS),
    })
}

fn event(
    tenant: u64,
    meter: usize,
    hour: u64,
    value: u64,
    customer: Option<String>,
) -> BillingEvent {
    let name = METERS.get(meter).copied().unwrap_or("unknown");
    let start = hour * HOUR_SECS;
    let end = start + HOUR_SECS;
    BillingEvent {
        specversion: "1.0",
        id: event_id(tenant, name, start),
        source: "dooz-server",
        event_type: format!("com.dooz.usage.{name}"),
        subject: format!("tenants/{tenant}"),
        time: format_time(end),
        datacontenttype: "application/json",
        data: BillingData {
            tenant,
            stripe_customer_id: customer,
            meter: name.to_owned(),
            window_start: format_time(start),
            window_end: format_time(end),
            timestamp: start,
            value,
        },
    }
}

/// A billing event as a Stripe meter event (`POST /v1/billing/meter_events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StripeMeterEvent {
    /// `dooz_<meter>`: the meter's `event_name` in Stripe.
    pub event_name: String,
    /// The CloudEvent's id: Stripe drops a second event with the same identifier.
    pub identifier: String,
    /// Start of the window (unix seconds).
    pub timestamp: u64,
    /// Customer and value.
    pub payload: StripePayload,
}

/// The payload of a [`StripeMeterEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StripePayload {
    /// The tenant's Stripe customer.
    pub stripe_customer_id: String,
    /// The value, as a string of digits (as Stripe takes it).
    pub value: String,
}

impl BillingEvent {
    /// The Stripe meter event of this event, when the tenant has a Stripe customer.
    pub fn to_stripe(&self) -> Option<StripeMeterEvent> {
        Some(StripeMeterEvent {
            event_name: format!("dooz_{}", self.data.meter),
            identifier: self.id.clone(),
            timestamp: self.data.timestamp,
            payload: StripePayload {
                stripe_customer_id: self.data.stripe_customer_id.clone()?,
                value: self.data.value.to_string(),
            },
        })
    }
}

// --- times -----------------------------------------------------------------------------------

/// The last second of year 9999, the latest time reports take.
pub const MAX_TIME: u64 = 253_402_300_799;

/// Reads a time: unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`, up to
/// [`MAX_TIME`].
pub fn parse_time(text: &str) -> Result<u64, MeteringError> {
    let text = text.trim();
    let bad = || {
        MeteringError::Invalid(format!(
            "{text:?} is not a time: give unix seconds, a date (2026-11-01) or an RFC 3339 time \
             in UTC (2026-11-01T00:00:00Z)"
        ))
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().filter(|&t| t <= MAX_TIME).ok_or_else(bad);
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let mut d = date.split('-');
    let num = |it: &mut std::str::Split<'_, char>| -> Result<u64, MeteringError> {
        let part = it.next().ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, m, day) = (num(&mut d)?, num(&mut d)?, num(&mut d)?);
    if d.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
    {
        return Err(bad());
    }
    let days = days_from_civil(y, m, day);
    if civil_from_days(days) != (y, m, day) {
        return Err(bad());
    }
    let mut secs = days * 86_400;
    if let Some(t) = time {
        let mut parts = t.split(':');
        let (h, mi, s) = (num(&mut parts)?, num(&mut parts)?, num(&mut parts)?);
        if parts.next().is_some() || h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + s;
    }
    Ok(secs)
}

/// Writes unix seconds as RFC 3339 in UTC (`2026-11-01T00:00:00Z`).
pub fn format_time(secs: u64) -> String {
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 of a date (proleptic Gregorian; years from 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    // Howard Hinnant's algorithm, for dates on or after 1970 (no negative values).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// The date of a day since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        let t = parse_time("2026-11-24T13:05:09Z").unwrap();
        assert_eq!(format_time(t), "2026-11-24T13:05:09Z");
        assert_eq!(parse_time("2024-02-29").unwrap() % 86_400, 0);
        assert_eq!(
            format_time(parse_time("2024-02-29").unwrap()),
            "2024-02-29T00:00:00Z"
        );
        for bad in [
            "",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "2026-11-24T25:00:00Z",
            "2026-11-24T10:00:00",
            "yesterday",
            "2026-1-x",
            "1969-12-31",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        // Every day of four years round-trips.
        let start = parse_time("2023-01-01").unwrap() / 86_400;
        for day in start..start + 4 * 366 {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn windows_hold_their_hours() {
        let t = parse_time("2026-02-17T05:30:00Z").unwrap();
        let hour = t / HOUR_SECS;
        let (s, e) = window_of(Window::Hour, hour);
        assert_eq!(
            (format_time(s), format_time(e)),
            ("2026-02-17T05:00:00Z".into(), "2026-02-17T06:00:00Z".into())
        );
        let (s, e) = window_of(Window::Day, hour);
        assert_eq!(
            (format_time(s), format_time(e)),
            ("2026-02-17T00:00:00Z".into(), "2026-02-18T00:00:00Z".into())
        );
        let (s, e) = window_of(Window::Month, hour);
        assert_eq!(
            (format_time(s), format_time(e)),
            ("2026-02-01T00:00:00Z".into(), "2026-03-01T00:00:00Z".into())
        );
        let dec = parse_time("2026-12-31T23:00:00Z").unwrap() / HOUR_SECS;
        let (_, e) = window_of(Window::Month, dec);
        assert_eq!(format_time(e), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = Cursor {
            hour: 7,
            tenant: 3,
            meter: 2,
        };
        assert_eq!(Cursor::parse(&c.format()).unwrap(), Some(c));
        assert_eq!(Cursor::parse("").unwrap(), None);
        for bad in ["x", "c1.1.2", "c1.1.2.9", "c1.a.2.1", "c2.1.2.1"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_depend_on_tenant_meter_and_window_only() {
        let a = event_id(1, "egress_bytes", 3600);
        assert_eq!(a, event_id(1, "egress_bytes", 3600));
        assert_eq!(a.len(), 32);
        assert_ne!(a, event_id(2, "egress_bytes", 3600));
        assert_ne!(a, event_id(1, "ingress_bytes", 3600));
        assert_ne!(a, event_id(1, "egress_bytes", 7200));
    }
}

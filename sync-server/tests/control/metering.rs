//! Metering on the control plane: billing events are idempotent and only for closed hours;
//! usage reports agree in JSON and CSV; invoice previews, entitlements and analytics come from
//! the same counters. Traffic and storage are put in the store at known past times, so the
//! expected figures are exact.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use dooz_protocol::{ChunkId, DeviceId, VaultId};
use dooz_server::{AccountId, HOUR_SECS, TenantId, TrafficCounts, TrafficKey};
use serde_json::{Value, json};

use crate::harness::TestApi;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every event from the start, following cursors with pages of `limit`.
async fn all_events(api: &TestApi, limit: u32, format: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let page = api
            .admin(
                "GET",
                &format!("/v1/billing/events?limit={limit}&after={after}&format={format}"),
                None,
            )
            .await
            .expect(200);
        let got = page["events"].as_array().unwrap().clone();
        assert!(got.len() <= limit as usize);
        events.extend(got);
        after = page["next_cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            return events;
        }
    }
}

async fn text(api: &TestApi, path: &str, token: &str) -> (u16, String, String) {
    let resp = api
        .client
        .get(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn billing_events_are_idempotent_and_only_for_closed_hours() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("billed", &["admin"]).await;
    let base = format!("/v1/tenants/{t}");
    let account = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            Some(&key),
            Some(json!({"name": "ana"})),
        )
        .await
        .expect(201);
    let account_id = account["id"].as_u64().unwrap();
    // The operator names the Stripe customer; the tenant's own key may read it, not set it.
    api.call(
        "PUT",
        &format!("{base}/billing"),
        Some(&key),
        Some(json!({"stripe_customer_id": "cus_Q1"})),
    )
    .await
    .problem(403);
    api.admin(
        "PUT",
        &format!("{base}/billing"),
        Some(json!({"stripe_customer_id": "cus_Q1"})),
    )
    .await
    .expect(200);
    let billing = api
        .call("GET", &format!("{base}/billing"), Some(&key), None)
        .await
        .expect(200);
    assert_eq!(billing["stripe_customer_id"], "cus_Q1");

    // Traffic in two closed hours and in the open one; a vault storing 7200 bytes from 30
    // minutes into the first.
    let store = api.server().store().clone();
    let h = now() / HOUR_SECS;
    let (tenant, acct) = (TenantId::new(t), AccountId::new(account_id));
    let vault = VaultId::from_bytes([7; 16]);
    let device = DeviceId::from_bytes([8; 32]);
    let key_at = |hour, vault| TrafficKey {
        tenant,
        hour,
        account: acct,
        vault,
        device: Some(device),
    };
    let counts = |i, e, r| TrafficCounts {
        ingress_bytes: i,
        egress_bytes: e,
        requests: r,
    };
    store
        .add_traffic(vec![
            (key_at(h - 3, Some(vault)), counts(1000, 5000, 10)),
            (key_at(h - 3, None), counts(50, 60, 2)),
            (key_at(h - 2, Some(vault)), counts(300, 0, 3)),
            (key_at(h, Some(vault)), counts(999, 999, 9)),
        ])
        .await
        .unwrap();
    store
        .create_vault(acct, vault, (h - 3) * HOUR_SECS)
        .await
        .unwrap();
    store
        .record_chunk(
            vault,
            ChunkId::from_bytes([9; 32]),
            7200,
            [1; 32],
            (h - 3) * HOUR_SECS + 1800,
        )
        .await
        .unwrap();

    let first = all_events(&api, 3, "cloudevents").await;
    let again = all_events(&api, 100, "cloudevents").await;
    assert_eq!(first, again, "a second export gives the same events");
    let ids: HashSet<&str> = first.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), first.len(), "no event twice");
    let ours: Vec<&Value> = first.iter().filter(|e| e["data"]["tenant"] == t).collect();
    let value = |hour: u64, meter: &str| {
        ours.iter()
            .find(|e| {
                e["data"]["meter"] == meter
                    && e["data"]["timestamp"].as_u64() == Some(hour * HOUR_SECS)
            })
            .map(|e| e["data"]["value"].as_u64().unwrap())
    };
    assert_eq!(value(h - 3, "ingress_bytes"), Some(1050));
    assert_eq!(value(h - 3, "egress_bytes"), Some(5060));
    assert_eq!(value(h - 3, "requests"), Some(12));
    assert_eq!(value(h - 3, "stored_byte_hours"), Some(3600));
    assert_eq!(value(h - 2, "ingress_bytes"), Some(300));
    assert_eq!(value(h - 2, "egress_bytes"), None, "zero is not an event");
    assert_eq!(value(h - 2, "stored_byte_hours"), Some(7200));
    assert_eq!(value(h - 1, "stored_byte_hours"), Some(7200));
    // The open hour is not exported.
    assert!(
        ours.iter()
            .all(|e| e["data"]["timestamp"].as_u64().unwrap() < h * HOUR_SECS),
        "an event of the open hour was exported"
    );
    for e in &ours {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "dooz-server");
        assert_eq!(e["subject"], format!("tenants/{t}"));
        assert_eq!(
            e["type"],
            format!("com.dooz.usage.{}", e["data"]["meter"].as_str().unwrap())
        );
        assert_eq!(e["data"]["stripe_customer_id"], "cus_Q1");
    }
    // A cursor at the end gives nothing new; a bad one is refused.
    let last = api
        .admin("GET", "/v1/billing/events?limit=1000", None)
        .await
        .expect(200);
    let cursor = last["next_cursor"].as_str().unwrap();
    let rest = api
        .admin("GET", &format!("/v1/billing/events?after={cursor}"), None)
        .await
        .expect(200);
    assert_eq!(rest["events"], json!([]));
    assert_eq!(rest["next_cursor"], cursor);
    api.admin("GET", "/v1/billing/events?after=nonsense", None)
        .await
        .problem(422);
    api.call("GET", "/v1/billing/events", Some(&key), None)
        .await
        .problem(403);

    // The Stripe mapping: same identifiers, the customer in the payload, values as strings.
    let stripe = all_events(&api, 100, "stripe").await;
    let ours_stripe: Vec<&Value> = stripe
        .iter()
        .filter(|e| e["payload"]["stripe_customer_id"] == "cus_Q1")
        .collect();
    assert_eq!(ours_stripe.len(), ours.len());
    for (s, c) in ours_stripe.iter().zip(&ours) {
        assert_eq!(s["identifier"], c["id"]);
        assert_eq!(
            s["event_name"],
            format!("dooz_{}", c["data"]["meter"].as_str().unwrap())
        );
        assert_eq!(s["timestamp"], c["data"]["timestamp"]);
        assert_eq!(s["payload"]["value"], c["data"]["value"].to_string());
    }

    // Reports: JSON and CSV agree row for row, and the hour rows add up to the events.
    let query = format!(
        "from={}&to={}&group_by=vault,device",
        (h - 3) * HOUR_SECS,
        (h + 1) * HOUR_SECS
    );
    let json_rows = api
        .call("GET", &format!("{base}/usage?{query}"), Some(&key), None)
        .await
        .expect(200)["rows"]
        .as_array()
        .unwrap()
        .clone();
    let (status, ctype, csv) = text(&api, &format!("{base}/usage?{query}&format=csv"), &key).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let csv_rows: Vec<&str> = lines.collect();
    assert_eq!(csv_rows.len(), json_rows.len());
    for (line, row) in csv_rows.iter().zip(&json_rows) {
        for (name, cell) in header.iter().zip(line.split(',')) {
            let want = match &row[*name] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(cell, want, "{name} in {line}");
        }
    }
    let sum = |field: &str| -> u64 {
        json_rows
            .iter()
            .map(|r| r[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("ingress_bytes"), 1050 + 300 + 999);
    assert_eq!(sum("requests"), 12 + 3 + 9);
    // Day and month windows hold the same totals.
    for window in ["day", "month"] {
        let rows = api
            .call(
                "GET",
                &format!("{base}/usage?{query}&window={window}"),
                Some(&key),
                None,
            )
            .await
            .expect(200)["rows"]
            .as_array()
            .unwrap()
            .clone();
        let total: u64 = rows
            .iter()
            .map(|r| r["ingress_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 1050 + 300 + 999, "{window}");
    }
    // Bad parameters are problems, not empty reports.
    api.call(
        "GET",
        &format!("{base}/usage?window=week"),
        Some(&key),
        None,
    )
    .await
    .problem(400);
    for bad in [
        "group_by=planet",
        "from=yesterday",
        "from=2026-01-01&to=2025-01-01",
        "from=2000-01-01&to=2026-01-01",
    ] {
        api.call("GET", &format!("{base}/usage?{bad}"), Some(&key), None)
            .await
            .problem(422);
    }
    // The operator's export has every tenant; a tenant key may not read it.
    let all = api
        .admin("GET", &format!("/v1/usage?{query}"), None)
        .await
        .expect(200);
    assert!(
        all["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["tenant"] == t)
    );
    api.call("GET", &format!("/v1/usage?{query}"), Some(&key), None)
        .await
        .problem(403);
}

#[tokio::test]
async fn invoice_previews_and_entitlements_price_the_metered_usage() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("priced", &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let plan = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({
                "name": "pro",
                "limits": {"monthly_egress_bytes": {"max": 5000, "hard": false},
                           "storage_bytes": {"max": 1_000_000, "hard": true}},
                "prices": {
                    "currency": "usd",
                    "base": 500,
                    "egress_bytes": {"included": 2000, "unit": 1000, "unit_price": 7},
                    "requests": {"unit": 10, "unit_price": 1}
                }
            })),
        )
        .await
        .expect(201);
    api.call(
        "POST",
        &format!("{base}/plans"),
        k,
        Some(json!({"name": "bad", "prices": {"currency": "USD"}})),
    )
    .await
    .problem(422);
    let account = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "ana"})),
        )
        .await
        .expect(201);
    let account_id = account["id"].as_u64().unwrap();
    api.call(
        "POST",
        &format!("{base}/subscriptions"),
        k,
        Some(json!({"account": account_id, "plan": plan["id"]})),
    )
    .await
    .expect(201);
    // 6500 bytes out and 25 requests this hour.
    let store = api.server().store().clone();
    let h = now() / HOUR_SECS;
    store
        .add_traffic(vec![(
            TrafficKey {
                tenant: TenantId::new(t),
                hour: h,
                account: AccountId::new(account_id),
                vault: None,
                device: Some(DeviceId::from_bytes([1; 32])),
            },
            TrafficCounts {
                ingress_bytes: 100,
                egress_bytes: 6500,
                requests: 25,
            },
        )])
        .await
        .unwrap();

    let preview = api
        .call(
            "GET",
            &format!(
                "{base}/invoice_preview?from={}&to={}",
                h * HOUR_SECS,
                (h + 1) * HOUR_SECS
            ),
            k,
            None,
        )
        .await
        .expect(200);
    let invoice = &preview["accounts"][0];
    assert_eq!(invoice["account"], account_id);
    assert_eq!(invoice["currency"], "usd");
    let line = |item: &str| {
        invoice["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["item"] == item)
            .unwrap()
            .clone()
    };
    assert_eq!(line("base")["amount"], 500);
    // 4500 bytes over the 2000 included: 5 started units of 1000 at 7.
    let egress = line("egress_bytes");
    assert_eq!(egress["usage"], 6500);
    assert_eq!(egress["overage"], 4500);
    assert_eq!(egress["amount"], 35);
    // 25 requests, none included: 3 started units of 10 at 1.
    assert_eq!(line("requests")["amount"], 3);
    assert_eq!(invoice["total"], 538);
    assert_eq!(preview["totals"]["usd"], 538);

    let ent = api
        .call(
            "GET",
            &format!("{base}/accounts/{account_id}/entitlements"),
            k,
            None,
        )
        .await
        .expect(200);
    assert_eq!(ent["access"], "full");
    assert_eq!(ent["monthly_egress_bytes"]["usage"], 6500);
    assert_eq!(ent["monthly_egress_bytes"]["limit"], 5000);
    assert_eq!(ent["monthly_egress_bytes"]["overage"], 1500);
    // A soft limit: still allowed.
    assert_eq!(ent["monthly_egress_bytes"]["has_access"], true);
    assert_eq!(ent["storage_bytes"]["usage"], 0);
    assert_eq!(ent["storage_bytes"]["has_access"], true);
    assert!(
        ent["storage_bytes"]["as_of"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let analytics = api
        .call("GET", &format!("{base}/analytics?days=2"), k, None)
        .await
        .expect(200);
    let days = analytics["by_day"].as_array().unwrap();
    assert_eq!(
        days.iter()
            .map(|d| d["egress_bytes"].as_u64().unwrap())
            .sum::<u64>(),
        6500
    );
    api.call("GET", &format!("{base}/analytics?days=0"), k, None)
        .await
        .problem(422);
}

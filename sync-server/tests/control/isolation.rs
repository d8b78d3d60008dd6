//! Tenant isolation: a key of tenant A gets 404 on every route of tenant B's resources.

use dooz_server::DeviceRegistration;
use dooz_server::tls::DeviceCert;
use serde_json::{Value, json};

use crate::harness::TestApi;

/// Every tenant-scoped route, with a body for the writes. `{t}` is the tenant, `{a}` an
/// account, `{p}` a plan, `{s}` a subscription, `{k}` an API key, `{d}` a device, `{w}` a
/// webhook endpoint.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/v1/tenants/{t}", None),
    (
        "POST",
        "/v1/tenants/{t}/api_keys",
        Some(r#"{"name":"x","scopes":["admin"]}"#),
    ),
    ("GET", "/v1/tenants/{t}/api_keys", None),
    ("GET", "/v1/tenants/{t}/api_keys/{k}", None),
    ("DELETE", "/v1/tenants/{t}/api_keys/{k}", None),
    ("POST", "/v1/tenants/{t}/api_keys/{k}/revoke", None),
    ("POST", "/v1/tenants/{t}/accounts", Some(r#"{"name":"x"}"#)),
    ("GET", "/v1/tenants/{t}/accounts", None),
    ("GET", "/v1/tenants/{t}/accounts/{a}", None),
    ("DELETE", "/v1/tenants/{t}/accounts/{a}", None),
    ("GET", "/v1/tenants/{t}/accounts/{a}/usage", None),
    (
        "POST",
        "/v1/tenants/{t}/accounts/{a}/enrolment_tokens",
        Some("{}"),
    ),
    ("GET", "/v1/tenants/{t}/accounts/{a}/devices", None),
    ("GET", "/v1/tenants/{t}/accounts/{a}/devices/{d}", None),
    (
        "PATCH",
        "/v1/tenants/{t}/accounts/{a}/devices/{d}",
        Some(r#"{"name":"x"}"#),
    ),
    (
        "POST",
        "/v1/tenants/{t}/accounts/{a}/devices/{d}/revoke",
        None,
    ),
    ("POST", "/v1/tenants/{t}/plans", Some(r#"{"name":"x"}"#)),
    ("GET", "/v1/tenants/{t}/plans", None),
    ("GET", "/v1/tenants/{t}/plans/{p}", None),
    (
        "PATCH",
        "/v1/tenants/{t}/plans/{p}",
        Some(r#"{"name":"y"}"#),
    ),
    ("DELETE", "/v1/tenants/{t}/plans/{p}", None),
    (
        "POST",
        "/v1/tenants/{t}/subscriptions",
        Some(r#"{"account":1,"plan":1}"#),
    ),
    ("GET", "/v1/tenants/{t}/subscriptions", None),
    ("GET", "/v1/tenants/{t}/subscriptions/{s}", None),
    (
        "PATCH",
        "/v1/tenants/{t}/subscriptions/{s}",
        Some(r#"{"status":"canceled"}"#),
    ),
    (
        "POST",
        "/v1/tenants/{t}/webhooks",
        Some(r#"{"url":"http://127.0.0.1:9/"}"#),
    ),
    ("GET", "/v1/tenants/{t}/webhooks", None),
    ("GET", "/v1/tenants/{t}/webhooks/{w}", None),
    (
        "PATCH",
        "/v1/tenants/{t}/webhooks/{w}",
        Some(r#"{"disabled":true}"#),
    ),
    ("DELETE", "/v1/tenants/{t}/webhooks/{w}", None),
    ("GET", "/v1/tenants/{t}/webhooks/{w}/deliveries", None),
    ("GET", "/v1/tenants/{t}/webhooks/{w}/deliveries/1", None),
    (
        "POST",
        "/v1/tenants/{t}/webhooks/{w}/deliveries/1/redeliver",
        None,
    ),
    (
        "POST",
        "/v1/tenants/{t}/webhooks/{w}/rotate_secret",
        Some("{}"),
    ),
    ("GET", "/v1/tenants/{t}/audit", None),
    ("GET", "/v1/tenants/{t}/storage", None),
    (
        "PUT",
        "/v1/tenants/{t}/storage",
        Some(r#"{"bucket":"b","access_key_id":"k","secret_access_key":"s"}"#),
    ),
    ("DELETE", "/v1/tenants/{t}/storage", None),
    ("GET", "/v1/tenants/{t}/export", None),
    ("GET", "/v1/tenants/{t}/usage", None),
    ("GET", "/v1/tenants/{t}/billing", None),
    (
        "PUT",
        "/v1/tenants/{t}/billing",
        Some(r#"{"stripe_customer_id":"cus_x"}"#),
    ),
    ("GET", "/v1/tenants/{t}/invoice_preview", None),
    ("GET", "/v1/tenants/{t}/accounts/{a}/entitlements", None),
    ("GET", "/v1/tenants/{t}/analytics", None),
];

struct Ids {
    t: u64,
    a: u64,
    p: u64,
    s: u64,
    k: u64,
    d: String,
    w: u64,
}

/// A tenant with one of everything; its admin key.
async fn populated(api: &TestApi, name: &str) -> (Ids, String) {
    let (t, key) = api.tenant_with_key(name, &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let id = |v: Value| v["id"].as_u64().unwrap();
    let a = id(api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "u"})),
        )
        .await
        .expect(201));
    let p = id(api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({"name": "p"})),
        )
        .await
        .expect(201));
    let s = id(api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": a, "plan": p})),
        )
        .await
        .expect(201));
    let keys = api
        .call("GET", &format!("{base}/api_keys"), k, None)
        .await
        .expect(200);
    let key_id = keys["data"][0]["id"].as_u64().unwrap();
    let token = api
        .call(
            "POST",
            &format!("{base}/accounts/{a}/enrolment_tokens"),
            k,
            Some(json!({})),
        )
        .await
        .expect(201);
    let w = id(api
        .call(
            "POST",
            &format!("{base}/webhooks"),
            k,
            Some(json!({"url": "http://127.0.0.1:9/", "events": ["device.revoked"]})),
        )
        .await
        .expect(201));
    let device = DeviceCert::generate().unwrap();
    let registered = api
        .server()
        .store()
        .redeem_enrolment(
            token["token"].as_str().unwrap(),
            DeviceRegistration {
                device: device.device_id().unwrap(),
                identity_key: device.identity_key().unwrap(),
                exchange_key: [1; 32],
                name: "d".into(),
            },
            1,
        )
        .await
        .unwrap();
    let ids = Ids {
        t,
        a,
        p,
        s,
        k: key_id,
        d: registered.device.to_hex(),
        w,
    };
    (ids, key)
}

fn fill(path: &str, ids: &Ids) -> String {
    path.replace("{t}", &ids.t.to_string())
        .replace("{a}", &ids.a.to_string())
        .replace("{p}", &ids.p.to_string())
        .replace("{s}", &ids.s.to_string())
        .replace("{k}", &ids.k.to_string())
        .replace("{d}", &ids.d)
        .replace("{w}", &ids.w.to_string())
}

#[tokio::test]
async fn a_key_of_tenant_a_gets_404_on_every_resource_of_tenant_b() {
    let api = TestApi::start().await;
    let (a_ids, a_key) = populated(&api, "tenant-a").await;
    let (b_ids, _) = populated(&api, "tenant-b").await;

    for (method, route, body) in ROUTES {
        let body: Option<Value> = body.map(|b| serde_json::from_str(b).unwrap());
        // B's resources under B's tenant path.
        let path = fill(route, &b_ids);
        api.call(method, &path, Some(&a_key), body.clone())
            .await
            .problem(404);
        // B's resources under A's own tenant path (ids that exist, but in B).
        if route.contains('{') && route != &"/v1/tenants/{t}" {
            let mixed = Ids {
                t: a_ids.t,
                a: b_ids.a,
                p: b_ids.p,
                s: b_ids.s,
                k: b_ids.k,
                d: b_ids.d.clone(),
                w: b_ids.w,
            };
            let mixed_path = fill(route, &mixed);
            let only_tenant_in_path = !["{a}", "{p}", "{s}", "{k}", "{d}", "{w}"]
                .iter()
                .any(|p| route.contains(p));
            if !only_tenant_in_path {
                api.call(method, &mixed_path, Some(&a_key), body.clone())
                    .await
                    .problem(404);
            }
        }
    }
    // Nothing of B changed: its subscription is still active, its device not revoked.
    let b = format!("/v1/tenants/{}", b_ids.t);
    let sub = api
        .admin("GET", &format!("{b}/subscriptions/{}", b_ids.s), None)
        .await
        .expect(200);
    assert_eq!(sub["status"], "active");
    let device = api
        .admin(
            "GET",
            &format!("{b}/accounts/{}/devices/{}", b_ids.a, b_ids.d),
            None,
        )
        .await
        .expect(200);
    assert!(device["revoked_at"].is_null());
    let hook = api
        .admin("GET", &format!("{b}/webhooks/{}", b_ids.w), None)
        .await
        .expect(200);
    assert_eq!(hook["disabled"], false);
    // And A's key cannot list tenants at all (operator only).
    api.call("GET", "/v1/tenants", Some(&a_key), None)
        .await
        .problem(403);
}

#[tokio::test]
async fn scopes_limit_what_a_key_may_do() {
    let api = TestApi::start().await;
    let (t, devices_key) = api.tenant_with_key("scoped", &["devices"]).await;
    let account = api
        .admin(
            "POST",
            &format!("/v1/tenants/{t}/accounts"),
            Some(json!({"name": "u"})),
        )
        .await
        .expect(201);
    let a = format!("/v1/tenants/{t}/accounts/{}", account["id"]);
    let k = Some(devices_key.as_str());
    api.call("GET", &format!("{a}/devices"), k, None)
        .await
        .expect(200);
    api.call("POST", &format!("{a}/enrolment_tokens"), k, Some(json!({})))
        .await
        .expect(201);
    let p = api
        .call("GET", &format!("{a}/usage"), k, None)
        .await
        .problem(403);
    assert!(p["detail"].as_str().unwrap().contains("usage:read"), "{p}");
    api.call(
        "POST",
        &format!("/v1/tenants/{t}/plans"),
        k,
        Some(json!({"name": "x"})),
    )
    .await
    .problem(403);
    // A revoked key stops working.
    let keys = api
        .admin("GET", &format!("/v1/tenants/{t}/api_keys"), None)
        .await
        .expect(200);
    let id = keys["data"][0]["id"].as_u64().unwrap();
    assert!(keys["data"][0]["last_used"].as_u64().is_some(), "{keys}");
    api.admin(
        "POST",
        &format!("/v1/tenants/{t}/api_keys/{id}/revoke"),
        None,
    )
    .await
    .expect(200);
    api.call("GET", &format!("{a}/devices"), k, None)
        .await
        .problem(401);
}

/// The isolation test's route list and the served OpenAPI document (generated from the
/// router's own handler list) name exactly the same tenant-scoped operations, so a new route
/// cannot escape the isolation test.
#[tokio::test]
async fn the_isolation_test_covers_every_route_of_the_openapi_document() {
    let api = TestApi::start().await;
    let doc = api
        .call("GET", "/v1/openapi.json", None, None)
        .await
        .expect(200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut served: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            served.push((method.to_uppercase(), path.clone()));
        }
    }
    served.sort();
    assert_eq!(served, dooz_server::control::openapi_operations());
    let named = |p: &str| {
        p.replace("{tenant}", "{t}")
            .replace("{account}", "{a}")
            .replace("{plan}", "{p}")
            .replace("{subscription}", "{s}")
            .replace("{key}", "{k}")
            .replace("{device}", "{d}")
            .replace("{webhook}", "{w}")
            .replace("{delivery}", "1")
    };
    let mut tenant_scoped: Vec<(String, String)> = served
        .iter()
        .filter(|(_, p)| p.starts_with("/v1/tenants/{tenant}"))
        .map(|(m, p)| (m.clone(), named(p)))
        .collect();
    tenant_scoped.sort();
    let mut tested: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    tested.sort();
    assert_eq!(tested, tenant_scoped);
    // Every operation answers errors as problem details, and has an id.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            if path != "/v1/openapi.json" {
                let not_found = &op["responses"]["404"]["content"]["application/problem+json"];
                assert!(not_found.is_object(), "{method} {path}: {op}");
            }
        }
    }
    // And every path the document names is served (not the 404 fallback).
    for (method, path) in &served {
        let concrete = path
            .replace("{tenant}", "999999")
            .replace("{device}", &"0".repeat(64))
            .replace(['{', '}'], "");
        // Without a credential a routed path answers 401 (or 200 for the public ones); the
        // fallbacks answer 404 and 405.
        let reply = api.call(method, &concrete, None, None).await;
        assert!(
            ![404, 405].contains(&reply.status),
            "{method} {path} is documented but not routed: {} {:?}",
            reply.status,
            reply.body
        );
    }
}

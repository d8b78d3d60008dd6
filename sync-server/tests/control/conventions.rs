//! Conventions: problem+json for every failure, cursor pagination, Idempotency-Key, health.

use serde_json::json;

use dooz_server::control::rate_limit::RateLimit;

use crate::harness::TestApi;

#[tokio::test]
async fn every_failure_is_problem_json() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("p", &["admin"]).await;
    let k = Some(key.as_str());
    // 404: unknown route, unknown resource, unparsable id.
    api.call("GET", "/v2/nothing", k, None).await.problem(404);
    api.call("GET", &format!("/v1/tenants/{t}/plans/999"), k, None)
        .await
        .problem(404);
    api.call("GET", &format!("/v1/tenants/{t}/plans/abc"), k, None)
        .await
        .problem(404);
    // 405.
    api.call("DELETE", "/v1/tenants", k, None)
        .await
        .problem(405);
    // 401: none, garbage, a well-formed key that does not exist.
    let p = api.call("GET", "/v1/tenants", None, None).await;
    assert!(p.headers.contains_key("www-authenticate"));
    p.problem(401);
    api.call("GET", "/v1/tenants", Some("nonsense"), None)
        .await
        .problem(401);
    let mut forged = key.clone();
    forged.replace_range(5..6, if &key[5..6] == "a" { "b" } else { "a" });
    api.call("GET", &format!("/v1/tenants/{t}"), Some(&forged), None)
        .await
        .problem(401);
    // 400: not JSON; 415: not declared JSON; 422: wrong shape or values.
    let bad = api
        .client
        .post(format!("{}/v1/tenants/{t}/plans", api.base))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let text = api
        .client
        .post(format!("{}/v1/tenants/{t}/plans", api.base))
        .bearer_auth(&key)
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(text.status().as_u16(), 415);
    api.call(
        "POST",
        &format!("/v1/tenants/{t}/plans"),
        k,
        Some(json!({"name": 5})),
    )
    .await
    .problem(422);
    api.call(
        "POST",
        &format!("/v1/tenants/{t}/plans"),
        k,
        Some(json!({"name": "x", "limits": {"disk": {"max": 1, "hard": true}}})),
    )
    .await
    .problem(422);
    api.call(
        "POST",
        &format!("/v1/tenants/{t}/plans"),
        k,
        Some(json!({"name": ""})),
    )
    .await
    .problem(422);
    api.call("GET", &format!("/v1/tenants/{t}/plans?limit=0"), k, None)
        .await
        .problem(422);
    api.call("GET", &format!("/v1/tenants/{t}/plans?cursor=zz"), k, None)
        .await
        .problem(400);
    // 409: a taken name.
    api.admin("POST", "/v1/tenants", Some(json!({"name": "p"})))
        .await
        .problem(409);
}

#[tokio::test]
async fn cursor_pagination_walks_every_item_once() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("pages", &["admin"]).await;
    let k = Some(key.as_str());
    for i in 0..5 {
        api.call(
            "POST",
            &format!("/v1/tenants/{t}/plans"),
            k,
            Some(json!({"name": format!("plan {i}")})),
        )
        .await
        .expect(201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/{t}/plans?limit=2&cursor={c}"),
            None => format!("/v1/tenants/{t}/plans?limit=2"),
        };
        let page = api.call("GET", &path, k, None).await.expect(200);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|p| p["name"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..5).map(|i| format!("plan {i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_another_body() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("idem", &["admin"]).await;
    let k = Some(key.as_str());
    let path = format!("/v1/tenants/{t}/accounts");
    let first = api
        .call_with(
            "POST",
            &path,
            k,
            Some(json!({"name": "ana"})),
            &[("idempotency-key", "abc")],
        )
        .await;
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let first = first.expect(201);
    let again = api
        .call_with(
            "POST",
            &path,
            k,
            Some(json!({"name": "ana"})),
            &[("idempotency-key", "abc")],
        )
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.expect(201), first);
    // One account was made, not two.
    let list = api.call("GET", &path, k, None).await.expect(200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Same key, another body: 422.
    let p = api
        .call_with(
            "POST",
            &path,
            k,
            Some(json!({"name": "bo"})),
            &[("idempotency-key", "abc")],
        )
        .await
        .problem(422);
    assert!(
        p["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{p}"
    );
    // Without the key, the same body is a new request (and a taken name).
    api.call("POST", &path, k, Some(json!({"name": "ana"})))
        .await
        .problem(409);
}

#[tokio::test]
async fn health_and_readiness() {
    let api = TestApi::start().await;
    // Every answer carries a request id: the caller's, or a new one.
    let given = api
        .call_with("GET", "/healthz", None, None, &[("x-request-id", "req-42")])
        .await;
    assert_eq!(given.headers["x-request-id"], "req-42");
    let made = api.call("GET", "/nowhere", None, None).await;
    assert_eq!(made.headers["x-request-id"].len(), 16);
    assert_eq!(
        api.call("GET", "/healthz", None, None).await.expect(200)["status"],
        "ok"
    );
    assert_eq!(
        api.call("GET", "/readyz", None, None).await.expect(200)["status"],
        "ready"
    );
}

#[tokio::test]
async fn each_credential_is_rate_limited_with_headers_and_429() {
    // Three requests at once, then one a minute: the fourth in a row is refused.
    let api = TestApi::start_with_rate_limit(Some(RateLimit {
        per_minute: 1,
        burst: 3,
    }))
    .await;
    let first = api.admin("GET", "/v1/tenants", None).await;
    assert_eq!(first.headers["ratelimit-policy"], "\"per-key\";q=3;w=180");
    assert_eq!(first.headers["ratelimit"], "\"per-key\";r=2;t=60");
    first.expect(200);
    api.admin("GET", "/v1/tenants", None).await.expect(200);
    api.admin("GET", "/v1/tenants", None).await.expect(200);
    let refused = api.admin("GET", "/v1/tenants", None).await;
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let p = refused.problem(429);
    assert_eq!(p["type"], "urn:dooz:problem:rate-limited");
    // Another credential has its own budget; requests without one are not counted.
    api.call("GET", "/healthz", None, None).await.expect(200);
    api.call("GET", "/v1/tenants", Some("x".repeat(40).as_str()), None)
        .await
        .problem(401);
}

#[tokio::test]
async fn metrics_count_requests_for_the_operator() {
    let api = TestApi::start().await;
    api.call("GET", "/healthz", None, None).await.expect(200);
    api.call("GET", "/nowhere", None, None).await.problem(404);
    let (_, key) = api.tenant_with_key("m", &["admin"]).await;
    api.call("GET", "/metrics", Some(&key), None)
        .await
        .problem(403);
    let resp = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("dooz_http_requests_total{method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("dooz_http_requests_total{method=\"GET\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dooz_http_requests_total{method=\"POST\",status=\"201\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("dooz_http_request_duration_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );
    // Metering totals, server-wide: no per-tenant label anywhere.
    for name in [
        "dooz_metered_ingress_bytes_total",
        "dooz_metered_egress_bytes_total",
        "dooz_metered_requests_total",
        "dooz_meter_batches_total",
        "dooz_meter_failures_total 0",
    ] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert!(!text.contains("tenant="), "{text}");
}

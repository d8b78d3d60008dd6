//! Deleting API keys and plans, renaming devices.

use serde_json::json;

use crate::harness::TestApi;

#[tokio::test]
async fn a_deleted_key_stops_working_and_a_used_plan_cannot_go() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("deleting", &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let other = api
        .call(
            "POST",
            &format!("{base}/api_keys"),
            k,
            Some(json!({"name": "ci", "scopes": ["usage:read"]})),
        )
        .await
        .expect(201);
    let other_secret = other["secret"].as_str().unwrap().to_owned();
    let o = Some(other_secret.as_str());
    api.call("GET", &format!("{base}/accounts"), o, None)
        .await
        .expect(200);
    let path = format!("{base}/api_keys/{}", other["id"]);
    api.call("DELETE", &path, k, None).await.expect(204);
    api.call("GET", &format!("{base}/accounts"), o, None)
        .await
        .problem(401);
    api.call("GET", &path, k, None).await.problem(404);
    api.call("DELETE", &path, k, None).await.problem(404);

    // A plan named by a subscription (even a canceled one) stays; an unused one goes.
    let plan = |name: &str| json!({"name": name});
    let used = api
        .call("POST", &format!("{base}/plans"), k, Some(plan("used")))
        .await
        .expect(201);
    let unused = api
        .call("POST", &format!("{base}/plans"), k, Some(plan("unused")))
        .await
        .expect(201);
    let account = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "ana"})),
        )
        .await
        .expect(201);
    let sub = api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": account["id"], "plan": used["id"]})),
        )
        .await
        .expect(201);
    api.call(
        "PATCH",
        &format!("{base}/subscriptions/{}", sub["id"]),
        k,
        Some(json!({"status": "canceled"})),
    )
    .await
    .expect(200);
    let refused = api
        .call("DELETE", &format!("{base}/plans/{}", used["id"]), k, None)
        .await
        .problem(409);
    assert_eq!(refused["type"], "urn:dooz:problem:plan-in-use");
    let u = format!("{base}/plans/{}", unused["id"]);
    api.call("DELETE", &u, k, None).await.expect(204);
    api.call("GET", &u, k, None).await.problem(404);
    api.call("GET", &format!("{base}/plans/{}", used["id"]), k, None)
        .await
        .expect(200);
    let audit = api
        .call("GET", &format!("{base}/audit?action=plan.delete"), k, None)
        .await
        .expect(200);
    assert_eq!(audit["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn devices_can_be_renamed() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("renaming", &["admin", "devices"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let account = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "ana"})),
        )
        .await
        .expect(201);
    let a = format!("{base}/accounts/{}", account["id"]);
    let token = api
        .call("POST", &format!("{a}/enrolment_tokens"), k, Some(json!({})))
        .await
        .expect(201);
    let device =
        crate::device::Device::enrol_and_connect(&api, token["token"].as_str().unwrap()).await;
    let d = format!("{a}/devices/{}", device.cert.device_id().unwrap().to_hex());
    let renamed = api
        .call("PATCH", &d, k, Some(json!({"name": "work laptop"})))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "work laptop");
    let shown = api.call("GET", &d, k, None).await.expect(200);
    assert_eq!(shown["name"], "work laptop");
    api.call("PATCH", &d, k, Some(json!({"name": ""})))
        .await
        .problem(422);
    api.call("PATCH", &d, k, Some(json!({"nom": "x"})))
        .await
        .problem(422);
}

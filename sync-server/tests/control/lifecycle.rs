//! The lifecycle: tenant → key → plan → account → subscription → enrolment token → device
//! enrols and connects → revoked over the API (its live connection closes) → subscription
//! transitions and the data-plane access they give.

use dooz_protocol::{ALPN, Extensions, Hello, Message, PROTOCOL_VERSION, Response};
use dooz_server::DeviceRegistration;
use dooz_server::frame_io::{FrameReader, write_frame};
use dooz_server::service::CloseCode;
use dooz_server::tls::{DeviceCert, SERVER_NAME};
use dooz_server::transport::{TransportTuning, client_config, client_endpoint};
use serde_json::json;

use crate::harness::{TestApi, within};

#[tokio::test]
async fn tenant_plan_account_subscription_enrolment_and_revocation() {
    let api = TestApi::start().await;
    let (tenant, secret) = api.tenant_with_key("acme", &["admin"]).await;
    let t = format!("/v1/tenants/{tenant}");
    let key = Some(secret.as_str());

    let plan = api
        .call(
            "POST",
            &format!("{t}/plans"),
            key,
            Some(json!({
                "name": "basic",
                "limits": {
                    "storage_bytes": {"max": 1_000_000, "hard": true},
                    "devices": {"max": 3, "hard": true},
                    "monthly_egress_bytes": {"max": 10_000_000, "hard": false},
                    "retention_days": {"max": 30, "hard": false}
                }
            })),
        )
        .await
        .expect(201);
    let plan_id = plan["id"].as_u64().unwrap();
    assert_eq!(plan["limits"]["devices"]["max"], 3);

    let account = api
        .call(
            "POST",
            &format!("{t}/accounts"),
            key,
            Some(json!({"name": "ana"})),
        )
        .await
        .expect(201);
    let account_id = account["id"].as_u64().unwrap();
    let a = format!("{t}/accounts/{account_id}");

    // A tenant with plans: an account without a subscription is read-only.
    let usage = api
        .call("GET", &format!("{a}/usage"), key, None)
        .await
        .expect(200);
    assert_eq!(usage["access"], "read_only");

    let sub = api
        .call(
            "POST",
            &format!("{t}/subscriptions"),
            key,
            Some(json!({"account": account_id, "plan": plan_id, "status": "trialing"})),
        )
        .await
        .expect(201);
    let sub_id = sub["id"].as_u64().unwrap();
    assert_eq!(sub["status"], "trialing");
    let got = api.call("GET", &a, key, None).await.expect(200);
    assert_eq!(got["subscription"], sub_id);
    let usage = api
        .call("GET", &format!("{a}/usage"), key, None)
        .await
        .expect(200);
    assert_eq!(usage["access"], "full");
    // A second live subscription for the same account is refused.
    api.call(
        "POST",
        &format!("{t}/subscriptions"),
        key,
        Some(json!({"account": account_id, "plan": plan_id})),
    )
    .await
    .problem(409);

    // Enrolment token and code; the device enrols with it and connects.
    let created = api
        .call(
            "POST",
            &format!("{a}/enrolment_tokens"),
            key,
            Some(json!({"expires_in": 600})),
        )
        .await;
    assert_eq!(created.headers["cache-control"], "no-store");
    let created = created.expect(201);
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("et1_"), "{created}");
    assert!(
        created["code"].as_str().unwrap().starts_with("dooz1-"),
        "{created}"
    );
    assert_eq!(created["reusable"], false);

    let device = DeviceCert::generate().unwrap();
    let device_id = device.device_id().unwrap();
    api.server()
        .store()
        .redeem_enrolment(
            token,
            DeviceRegistration {
                device: device_id,
                identity_key: device.identity_key().unwrap(),
                exchange_key: [7; 32],
                name: "laptop".to_owned(),
            },
            1,
        )
        .await
        .unwrap();
    let tuning = TransportTuning::default();
    let config = client_config(&device, api.server().fingerprint(), ALPN, &tuning).unwrap();
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), config, &tuning).unwrap();
    let conn = within(
        endpoint
            .connect(api.server().local_addr(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "control tests".into(),
        client_version: "0".into(),
        ext: Extensions::new(),
    };
    write_frame(&mut send, &hello.into()).await.unwrap();
    send.finish().unwrap();
    match within(FrameReader::new(recv).read_frame()).await.unwrap() {
        Some(Message::Response(Response::HelloOk(ok))) => assert_eq!(ok.device, device_id),
        other => panic!("unexpected answer {other:?}"),
    }

    let devices = api
        .call("GET", &format!("{a}/devices"), key, None)
        .await
        .expect(200);
    let listed = devices["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let hex = device_id.to_hex();
    assert_eq!(listed[0]["id"], hex.as_str());
    assert_eq!(listed[0]["name"], "laptop");
    assert!(listed[0]["last_seen"].as_u64().unwrap() > 1, "{devices}");
    assert!(listed[0]["revoked_at"].is_null());

    // Revoking over the API closes the live connection at once.
    let revoked = api
        .call("POST", &format!("{a}/devices/{hex}/revoke"), key, None)
        .await
        .expect(200);
    assert!(revoked["revoked_at"].as_u64().is_some(), "{revoked}");
    match within(conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                CloseCode::from_code(close.error_code.into_inner()),
                Some(CloseCode::Revoked)
            );
        }
        other => panic!("expected a Revoked close, got {other:?}"),
    }

    // Transitions: trialing → active → past_due (grace: full) → canceled (read-only).
    let s = format!("{t}/subscriptions/{sub_id}");
    for (status, access) in [
        ("active", "full"),
        ("past_due", "full"),
        ("canceled", "read_only"),
    ] {
        let updated = api
            .call("PATCH", &s, key, Some(json!({"status": status})))
            .await
            .expect(200);
        assert_eq!(updated["status"], status);
        let usage = api
            .call("GET", &format!("{a}/usage"), key, None)
            .await
            .expect(200);
        assert_eq!(usage["access"], access, "after {status}");
    }

    // The audit log has it all, filterable.
    let audit = api
        .call(
            "GET",
            &format!("{t}/audit?action=subscription.update"),
            key,
            None,
        )
        .await
        .expect(200);
    let events = audit["data"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{audit}");
    assert!(
        events
            .iter()
            .all(|e| e["target"] == format!("subscription/{sub_id}"))
    );
    assert!(
        events
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("key:"))
    );
    let revokes = api
        .call("GET", &format!("{t}/audit?action=device.revoke"), key, None)
        .await
        .expect(200);
    assert_eq!(revokes["data"][0]["target"], format!("device/{hex}"));

    // The tenant's export holds all of it, and no secret.
    let export = api
        .call("GET", &format!("{t}/export"), key, None)
        .await
        .expect(200);
    assert_eq!(export["tenant"]["name"], "acme");
    assert_eq!(export["accounts"][0]["name"], "ana");
    assert_eq!(export["accounts"][0]["devices"][0]["id"], hex.as_str());
    assert_eq!(export["plans"][0]["id"], plan_id);
    assert_eq!(export["subscriptions"][0]["status"], "canceled");
    assert_eq!(export["api_keys"].as_array().unwrap().len(), 1);
    assert!(export["api_keys"][0].get("secret").is_none());
    assert!(export["audit"].as_array().unwrap().len() >= 8, "{export}");
    let text = export.to_string();
    assert!(!text.contains(secret.as_str()) && !text.contains(token));
}

#[tokio::test]
async fn invalid_subscription_transitions_are_refused_with_409() {
    let api = TestApi::start().await;
    let (tenant, key) = api.tenant_with_key("beta", &["admin"]).await;
    let t = format!("/v1/tenants/{tenant}");
    let key = Some(key.as_str());
    let plan = api
        .call(
            "POST",
            &format!("{t}/plans"),
            key,
            Some(json!({"name": "p"})),
        )
        .await
        .expect(201);
    let account = api
        .call(
            "POST",
            &format!("{t}/accounts"),
            key,
            Some(json!({"name": "bo"})),
        )
        .await
        .expect(201);
    // Not a starting status.
    api.call(
        "POST",
        &format!("{t}/subscriptions"),
        key,
        Some(json!({"account": account["id"], "plan": plan["id"], "status": "past_due"})),
    )
    .await
    .problem(422);
    let sub = api
        .call(
            "POST",
            &format!("{t}/subscriptions"),
            key,
            Some(json!({"account": account["id"], "plan": plan["id"]})),
        )
        .await
        .expect(201);
    assert_eq!(sub["status"], "active");
    let s = format!("{t}/subscriptions/{}", sub["id"]);

    let problem = api
        .call("PATCH", &s, key, Some(json!({"status": "trialing"})))
        .await
        .problem(409);
    assert_eq!(problem["type"], "urn:dooz:problem:invalid-transition");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot go from active to trialing"),
        "{detail}"
    );
    assert!(detail.contains("past_due, canceled, paused"), "{detail}");

    api.call("PATCH", &s, key, Some(json!({"status": "paused"})))
        .await
        .expect(200);
    let usage = api
        .call(
            "GET",
            &format!("{t}/accounts/{}/usage", account["id"]),
            key,
            None,
        )
        .await
        .expect(200);
    assert_eq!(usage["access"], "blocked");
    api.call("PATCH", &s, key, Some(json!({"status": "canceled"})))
        .await
        .expect(200);
    let problem = api
        .call("PATCH", &s, key, Some(json!({"status": "active"})))
        .await
        .problem(409);
    assert!(
        problem["detail"].as_str().unwrap().contains("final"),
        "{problem}"
    );
    // The refused transition changed nothing.
    let got = api.call("GET", &s, key, None).await.expect(200);
    assert_eq!(got["status"], "canceled");
    // Unknown status: 422.
    api.call("PATCH", &s, key, Some(json!({"status": "zombie"})))
        .await
        .problem(422);
    // A canceled subscription can be replaced by a new one.
    api.call(
        "POST",
        &format!("{t}/subscriptions"),
        key,
        Some(json!({"account": account["id"], "plan": plan["id"]})),
    )
    .await
    .expect(201);
}

//! Deleting API keys and plans, renaming devices.

use dooz_protocol::{Response, VaultId};
use serde_json::json;

use crate::device::Device;
use crate::harness::{TestApi, within};

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
    let device = Device::enrol_and_connect(&api, token["token"].as_str().unwrap()).await;
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

#[tokio::test]
async fn deleting_an_account_deletes_its_blobs_and_metadata() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("gdpr", &["admin", "devices"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let plan = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({"name": "p"})),
        )
        .await
        .expect(201);
    let account = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "leaving"})),
        )
        .await
        .expect(201);
    let sub = api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": account["id"], "plan": plan["id"]})),
        )
        .await
        .expect(201);
    let a = format!("{base}/accounts/{}", account["id"]);
    let token = api
        .call("POST", &format!("{a}/enrolment_tokens"), k, Some(json!({})))
        .await
        .expect(201);
    let device = Device::enrol_and_connect(&api, token["token"].as_str().unwrap()).await;
    let v = VaultId::from_bytes([4; 16]);
    assert!(matches!(
        device.create_vault(v).await,
        Response::VaultCreated(_)
    ));
    assert!(matches!(
        device.put_chunk(v, 1, &[1; 300]).await,
        Response::ChunkStored(_)
    ));
    // Small chunks wait in an open pack until a commit or a timer writes it.
    api.server().seal_open_packs().await;
    let prefix = dooz_storage::BlobKey::new(&format!("{t}/{}", v.to_hex())).unwrap();
    let blobs = api.server().blobs().list(Some(&prefix)).await.unwrap();
    assert_eq!(
        blobs.len(),
        1,
        "the chunk's pack is stored under the vault's prefix"
    );

    let deleted = api.call("DELETE", &a, k, None).await.expect(200);
    assert_eq!(
        deleted,
        json!({"id": account["id"], "deleted": true, "devices_revoked": 1,
               "vaults_deleted": 1, "blobs_deleted": 1})
    );
    // The device's connection is closed; blobs, metadata and control records are gone.
    within(device.conn.closed()).await;
    assert!(
        api.server()
            .blobs()
            .list(Some(&prefix))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(api.server().store().vault(v).await.unwrap().is_none());
    assert!(
        api.server()
            .store()
            .device(device.cert.device_id().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    api.call("GET", &a, k, None).await.problem(404);
    api.call("DELETE", &a, k, None).await.problem(404);
    api.call(
        "GET",
        &format!("{base}/subscriptions/{}", sub["id"]),
        k,
        None,
    )
    .await
    .problem(404);
    let listed = api
        .call("GET", &format!("{base}/accounts"), k, None)
        .await
        .expect(200);
    assert_eq!(listed["data"], json!([]));
    // Its plan is free to go now.
    api.call("DELETE", &format!("{base}/plans/{}", plan["id"]), k, None)
        .await
        .expect(204);
}

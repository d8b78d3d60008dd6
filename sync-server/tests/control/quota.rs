//! Plans and subscriptions set through the API govern the data plane: the storage quota is hit,
//! a plan upgrade lets uploads resume, a canceled subscription keeps downloads and refuses
//! uploads.

use dooz_protocol::{ErrorCode, Resource, Response, VaultId};
use serde_json::json;

use crate::device::Device;
use crate::harness::TestApi;

fn error_code(response: Response) -> ErrorCode {
    match response {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn stored(response: Response) {
    assert!(
        matches!(response, Response::ChunkStored(_)),
        "expected ChunkStored, got {response:?}"
    );
}

#[tokio::test]
async fn quota_upgrade_and_cancellation_reach_the_data_plane() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("metered", &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let plan = |name: &str, max: u64| json!({"name": name, "limits": {"storage_bytes": {"max": max, "hard": true}}});
    let small = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(plan("small", 1000)),
        )
        .await
        .expect(201);
    let large = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(plan("large", 100_000)),
        )
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
    let a = format!("{base}/accounts/{}", account["id"]);
    let sub = api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": account["id"], "plan": small["id"]})),
        )
        .await
        .expect(201);
    let s = format!("{base}/subscriptions/{}", sub["id"]);
    let token = api
        .call("POST", &format!("{a}/enrolment_tokens"), k, Some(json!({})))
        .await
        .expect(201);
    let device = Device::enrol_and_connect(&api, token["token"].as_str().unwrap()).await;
    let v = VaultId::from_bytes([9; 16]);
    assert!(matches!(
        device.create_vault(v).await,
        Response::VaultCreated(_)
    ));

    // The small plan: 600 bytes fit, 600 more do not.
    stored(device.put_chunk(v, 1, &[1; 600]).await);
    match error_code(device.put_chunk(v, 2, &[2; 600]).await) {
        ErrorCode::QuotaExceeded {
            resource,
            limit,
            used,
        } => {
            assert_eq!(resource, Resource::StorageBytes);
            assert_eq!(limit, 1000);
            assert_eq!(used, 600);
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }

    // Upgrade: the same upload goes through at once.
    api.call("PATCH", &s, k, Some(json!({"plan": large["id"]})))
        .await
        .expect(200);
    stored(device.put_chunk(v, 2, &[2; 600]).await);
    // Small chunks are counted in the stored bytes once their pack is written.
    api.server().seal_open_packs().await;
    let usage = api
        .call("GET", &format!("{a}/usage"), k, None)
        .await
        .expect(200);
    assert_eq!(usage["stored_bytes"], 1200);

    // Canceled: downloads still work, uploads are refused.
    api.call("PATCH", &s, k, Some(json!({"status": "canceled"})))
        .await
        .expect(200);
    assert_eq!(
        error_code(device.put_chunk(v, 3, &[3; 10]).await),
        ErrorCode::SubscriptionInactive
    );
    assert!(
        matches!(device.get_chunk(v, 1).await, Response::ChunkData(_)),
        "downloads work on a canceled subscription"
    );

    // Paused: nothing works.
    let account2 = api
        .call(
            "POST",
            &format!("{base}/accounts"),
            k,
            Some(json!({"name": "bo"})),
        )
        .await
        .expect(201);
    let sub2 = api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": account2["id"], "plan": large["id"]})),
        )
        .await
        .expect(201);
    let token2 = api
        .call(
            "POST",
            &format!("{base}/accounts/{}/enrolment_tokens", account2["id"]),
            k,
            Some(json!({})),
        )
        .await
        .expect(201);
    let device2 = Device::enrol_and_connect(&api, token2["token"].as_str().unwrap()).await;
    let v2 = VaultId::from_bytes([10; 16]);
    assert!(matches!(
        device2.create_vault(v2).await,
        Response::VaultCreated(_)
    ));
    api.call(
        "PATCH",
        &format!("{base}/subscriptions/{}", sub2["id"]),
        k,
        Some(json!({"status": "paused"})),
    )
    .await
    .expect(200);
    assert_eq!(
        error_code(device2.get_chunk(v2, 1).await),
        ErrorCode::SubscriptionInactive
    );
}

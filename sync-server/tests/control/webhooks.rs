//! Webhooks: a real receiver on 127.0.0.1 that checks the signature on its own (HMAC-SHA256 of
//! `"<t>.<body>"`), fails the first attempts, and gets every event after retries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dooz_protocol::Response;
use dooz_server::control::model::{DeliveryStatus, WebhookEndpoint};
use dooz_server::control::{CONTROL_DIR, ControlStore, Webhooks};
use dooz_server::{MetaStore, SledStore};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device::Device;
use crate::harness::{TestApi, fast_webhooks, within};

/// A webhook receiver: answers 503 to the first `fail_first` requests, then checks the
/// signature and passes each verified event on.
struct Receiver {
    secret: Mutex<Option<String>>,
    /// A second secret whose signature must be there too (during a secret rotation).
    also: Mutex<Option<String>>,
    /// How many `v1` signatures the last verified request carried.
    signatures: AtomicU32,
    fail_first: u32,
    seen: AtomicU32,
    events: mpsc::UnboundedSender<Value>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if r.seen.fetch_add(1, Ordering::SeqCst) < r.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let secret = r.secret.lock().unwrap().clone().expect("the secret is set");
    let header = headers["dooz-signature"].to_str().unwrap();
    let mut parts = header.split(',');
    let t = parts.next().unwrap().strip_prefix("t=").unwrap();
    let v1s: Vec<&str> = parts.map(|p| p.strip_prefix("v1=").unwrap()).collect();
    let expected = |secret: &str| -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(
        v1s.contains(&expected(&secret).as_str()),
        "the signature does not verify"
    );
    if let Some(also) = r.also.lock().unwrap().clone() {
        assert!(
            v1s.contains(&expected(&also).as_str()),
            "the previous secret's signature is missing"
        );
    }
    r.signatures
        .store(u32::try_from(v1s.len()).unwrap(), Ordering::SeqCst);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t.parse::<u64>().unwrap()) < 300);
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["dooz-event-id"].to_str().unwrap(), event["id"]);
    r.events.send(event).unwrap();
    StatusCode::OK
}

/// Starts a receiver; `(url, receiver, events)`.
async fn receiver(fail_first: u32) -> (String, Arc<Receiver>, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let r = Arc::new(Receiver {
        secret: Mutex::new(None),
        also: Mutex::new(None),
        signatures: AtomicU32::new(0),
        fail_first,
        seen: AtomicU32::new(0),
        events: tx,
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&r));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, r, rx)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    within(events.recv()).await.expect("an event")
}

#[tokio::test]
async fn events_are_signed_retried_and_logged() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("hooked", &["admin", "devices"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let (url, r, mut events) = receiver(2).await;

    // Bad URLs and event types are refused.
    api.call(
        "POST",
        &format!("{base}/webhooks"),
        k,
        Some(json!({"url": "ftp://x/"})),
    )
    .await
    .problem(422);
    api.call(
        "POST",
        &format!("{base}/webhooks"),
        k,
        Some(json!({"url": url, "events": ["nope"]})),
    )
    .await
    .problem(422);

    let reply = api
        .call(
            "POST",
            &format!("{base}/webhooks"),
            k,
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(reply.headers["cache-control"], "no-store");
    let hook = reply.expect(201);
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    *r.secret.lock().unwrap() = Some(secret);
    let w = format!("{base}/webhooks/{}", hook["id"]);
    let shown = api.call("GET", &w, k, None).await.expect(200);
    assert!(shown.get("secret").is_none(), "the secret is shown once");
    assert_eq!(shown["url"], url.as_str());

    // A subscription: the receiver fails twice, then gets it.
    let plan = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({"name": "one device", "limits": {"devices": {"max": 1, "hard": true}}})),
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
    let sub = api
        .call(
            "POST",
            &format!("{base}/subscriptions"),
            k,
            Some(json!({"account": account["id"], "plan": plan["id"]})),
        )
        .await
        .expect(201);
    let event = next_event(&mut events).await;
    assert_eq!(event["type"], "subscription.created");
    assert_eq!(event["tenant"], t);
    assert_eq!(event["data"]["object"]["id"], sub["id"]);
    assert_eq!(r.seen.load(Ordering::SeqCst), 3);

    // The delivery log shows the three attempts (once the server has recorded the last).
    let delivery = within(async {
        loop {
            let log = api
                .call("GET", &format!("{w}/deliveries"), k, None)
                .await
                .expect(200);
            let d = log["data"][0].clone();
            if d["status"] == "delivered" {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(delivery["event_id"], event["id"]);
    assert_eq!(delivery["event_type"], "subscription.created");
    let codes: Vec<u64> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [503, 503, 200]);
    assert!(delivery["next_attempt_at_ms"].is_null());
    let one = api
        .call(
            "GET",
            &format!("{w}/deliveries/{}", delivery["id"]),
            k,
            None,
        )
        .await
        .expect(200);
    assert_eq!(one, delivery);

    // A device enrols over QUIC: device.enrolled, and it is the plan's only device: 100%.
    let a = format!("{base}/accounts/{}", account["id"]);
    let token = api
        .call("POST", &format!("{a}/enrolment_tokens"), k, Some(json!({})))
        .await
        .expect(201);
    let (answer, cert) = Device::enrol_over_quic(&api, token["token"].as_str().unwrap()).await;
    assert!(matches!(answer, Response::HelloOk(_)), "{answer:?}");
    let device_hex = cert.device_id().unwrap().to_hex();
    let mut got = [next_event(&mut events).await, next_event(&mut events).await];
    got.sort_by_key(|e| e["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["type"], "device.enrolled");
    assert_eq!(got[0]["data"]["object"]["id"], device_hex.as_str());
    assert_eq!(got[1]["type"], "quota.threshold");
    assert_eq!(
        got[1]["data"],
        json!({"account": account["id"], "resource": "devices", "threshold_percent": 100,
               "used": 1, "limit": 1, "hard": true})
    );

    // Revoked: device.revoked. A plan change: subscription.updated with the previous state.
    api.call("POST", &format!("{a}/devices/{device_hex}/revoke"), k, None)
        .await
        .expect(200);
    let event = next_event(&mut events).await;
    assert_eq!(event["type"], "device.revoked");
    assert_eq!(event["data"]["object"]["id"], device_hex.as_str());
    let s = format!("{base}/subscriptions/{}", sub["id"]);
    api.call("PATCH", &s, k, Some(json!({"status": "past_due"})))
        .await
        .expect(200);
    let event = next_event(&mut events).await;
    assert_eq!(event["type"], "subscription.updated");
    assert_eq!(event["data"]["object"]["status"], "past_due");
    assert_eq!(event["data"]["previous"]["status"], "active");

    // An endpoint for device.revoked only, then disabled, then deleted.
    let only = api
        .call("PATCH", &w, k, Some(json!({"events": ["device.revoked"]})))
        .await
        .expect(200);
    assert_eq!(only["events"], json!(["device.revoked"]));
    api.call("PATCH", &s, k, Some(json!({"status": "active"})))
        .await
        .expect(200);
    api.call("DELETE", &w, k, None).await.expect(204);
    api.call("GET", &w, k, None).await.problem(404);
    api.call("GET", &format!("{w}/deliveries"), k, None)
        .await
        .problem(404);
    assert!(
        events.try_recv().is_err(),
        "no event for a type the endpoint does not want"
    );
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (url, r, mut events) = receiver(0).await;
    {
        let store = ControlStore::open(dir.path().join(CONTROL_DIR)).unwrap();
        let endpoint = WebhookEndpoint {
            id: 0,
            tenant: 5,
            url,
            events: vec![],
            disabled: false,
            created_at: 0,
        };
        store.create_webhook(endpoint, "whsec_test").await.unwrap();
        *r.secret.lock().unwrap() = Some("whsec_test".to_owned());
        // Queued while no delivery task runs (the server stops before delivering it).
        let webhooks = Webhooks::new(store.clone(), fast_webhooks());
        let id = webhooks
            .emit(5, "device.revoked", json!({"object": {"id": "ab"}}))
            .await
            .unwrap();
        assert!(id.is_some());
        let pending = store.pending_deliveries().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].status, DeliveryStatus::Pending);
    }
    // Started again: the task finds the event in the outbox and delivers it.
    let store = ControlStore::open(dir.path().join(CONTROL_DIR)).unwrap();
    let webhooks = Webhooks::new(store.clone(), fast_webhooks());
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::temporary().unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(webhooks.run(meta, cancel.clone()));
    let event = next_event(&mut events).await;
    assert_eq!(event["type"], "device.revoked");
    assert_eq!(event["tenant"], 5);
    cancel.cancel();
    within(task).await.unwrap();
}

#[tokio::test]
async fn secrets_rotate_with_an_overlap_and_deliveries_can_be_sent_again() {
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("rotating", &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let (url, r, mut events) = receiver(0).await;
    let hook = api
        .call(
            "POST",
            &format!("{base}/webhooks"),
            k,
            Some(json!({"url": url, "events": ["subscription.created"]})),
        )
        .await
        .expect(201);
    let first = hook["secret"].as_str().unwrap().to_owned();
    *r.secret.lock().unwrap() = Some(first.clone());
    let w = format!("{base}/webhooks/{}", hook["id"]);
    let plan = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({"name": "p"})),
        )
        .await
        .expect(201);
    let subscribe = |name: &'static str| {
        let (api, base, plan) = (&api, base.clone(), plan["id"].clone());
        async move {
            let account = api
                .call(
                    "POST",
                    &format!("{base}/accounts"),
                    k,
                    Some(json!({"name": name})),
                )
                .await
                .expect(201);
            api.call(
                "POST",
                &format!("{base}/subscriptions"),
                k,
                Some(json!({"account": account["id"], "plan": plan})),
            )
            .await
            .expect(201)
        }
    };

    // Rotation: the new secret is shown once; both sign until the old one expires.
    api.call(
        "POST",
        &format!("{w}/rotate_secret"),
        k,
        Some(json!({"expire_current_after": 604_801})),
    )
    .await
    .problem(422);
    let rotated = api
        .call(
            "POST",
            &format!("{w}/rotate_secret"),
            k,
            Some(json!({"expire_current_after": 3600})),
        )
        .await;
    assert_eq!(rotated.headers["cache-control"], "no-store");
    let rotated = rotated.expect(200);
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert!(second.starts_with("whsec_") && second != first);
    assert!(rotated["previous_secret_expires_at"].as_u64().unwrap() > 0);
    *r.secret.lock().unwrap() = Some(second.clone());
    *r.also.lock().unwrap() = Some(first.clone());
    subscribe("ana").await;
    let event = next_event(&mut events).await;
    assert_eq!(event["type"], "subscription.created");
    assert_eq!(r.signatures.load(Ordering::SeqCst), 2);

    // Rotating again with no overlap: only the newest secret signs.
    let third = api
        .call(
            "POST",
            &format!("{w}/rotate_secret"),
            k,
            Some(json!({"expire_current_after": 0})),
        )
        .await
        .expect(200);
    assert!(third["previous_secret_expires_at"].is_null());
    *r.secret.lock().unwrap() = Some(third["secret"].as_str().unwrap().to_owned());
    *r.also.lock().unwrap() = None;
    subscribe("bo").await;
    let again = next_event(&mut events).await;
    assert_eq!(r.signatures.load(Ordering::SeqCst), 1);

    // Redelivery: the same event (same id and body) comes again, as a new delivery.
    let delivered = within(async {
        loop {
            let log = api
                .call("GET", &format!("{w}/deliveries"), k, None)
                .await
                .expect(200);
            let found = log["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["event_id"] == again["id"] && d["status"] == "delivered")
                .cloned();
            if let Some(d) = found {
                return d;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let copy = api
        .call(
            "POST",
            &format!("{w}/deliveries/{}/redeliver", delivered["id"]),
            k,
            None,
        )
        .await
        .expect(201);
    assert_ne!(copy["id"], delivered["id"]);
    assert_eq!(copy["event_id"], delivered["event_id"]);
    assert_eq!(copy["payload"], delivered["payload"]);
    let resent = next_event(&mut events).await;
    assert_eq!(resent, again);
    api.call("POST", &format!("{w}/deliveries/999999/redeliver"), k, None)
        .await
        .problem(404);
}

#[tokio::test]
async fn monthly_egress_crosses_thresholds_as_metered() {
    use dooz_protocol::DeviceId;
    use dooz_server::{AccountId, HOUR_SECS, TenantId, TrafficCounts, TrafficKey};
    let api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("egress", &["admin"]).await;
    let k = Some(key.as_str());
    let base = format!("/v1/tenants/{t}");
    let (url, r, mut events) = receiver(0).await;
    let hook = api
        .call(
            "POST",
            &format!("{base}/webhooks"),
            k,
            Some(json!({"url": url, "events": ["quota.threshold"]})),
        )
        .await
        .expect(201);
    *r.secret.lock().unwrap() = Some(hook["secret"].as_str().unwrap().to_owned());
    let plan = api
        .call(
            "POST",
            &format!("{base}/plans"),
            k,
            Some(json!({"name": "metered",
                        "limits": {"monthly_egress_bytes": {"max": 1000, "hard": false}}})),
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
    api.call(
        "POST",
        &format!("{base}/subscriptions"),
        k,
        Some(json!({"account": account["id"], "plan": plan["id"]})),
    )
    .await
    .expect(201);
    let egress = |bytes| {
        let store = api.server().store().clone();
        let account = AccountId::new(account["id"].as_u64().unwrap());
        async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            store
                .add_traffic(vec![(
                    TrafficKey {
                        tenant: TenantId::new(t),
                        hour: now / HOUR_SECS,
                        account,
                        vault: None,
                        device: Some(DeviceId::from_bytes([5; 32])),
                    },
                    TrafficCounts {
                        ingress_bytes: 0,
                        egress_bytes: bytes,
                        requests: 1,
                    },
                )])
                .await
                .unwrap();
        }
    };
    // 850 of 1000 bytes: 80%; a plan change makes the check run at once.
    egress(850).await;
    let touch = json!({"name": "metered"});
    let p = format!("{base}/plans/{}", plan["id"]);
    api.call("PATCH", &p, k, Some(touch.clone()))
        .await
        .expect(200);
    let event = next_event(&mut events).await;
    assert_eq!(
        event["data"],
        json!({"account": account["id"], "resource": "monthly_egress_bytes",
               "threshold_percent": 80, "used": 850, "limit": 1000, "hard": false})
    );
    egress(200).await;
    api.call("PATCH", &p, k, Some(touch)).await.expect(200);
    let event = next_event(&mut events).await;
    assert_eq!(event["data"]["resource"], "monthly_egress_bytes");
    assert_eq!(event["data"]["threshold_percent"], 100);
    assert_eq!(event["data"]["used"], 1050);
}

//! Tenant-provided storage: a tenant moves to its own bucket on a real S3-compatible server
//! (s3s-fs on 127.0.0.1) and back, its blobs move in the background, reads keep working while
//! they move, other tenants stay on the default backend, and the bucket's secret is nowhere in
//! the data dir in plaintext.

use dooz_protocol::{Response, VaultId};
use dooz_storage::testing::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use dooz_storage::{BlobKey, BlobStore};
use serde_json::{Value, json};

use crate::device::Device;
use crate::harness::{TestApi, within};

/// A tenant with an account and a connected device with one vault; `(tenant, key, device,
/// vault)`.
async fn tenant_with_device(api: &TestApi, name: &str) -> (u64, String, Device, VaultId) {
    let (t, key) = api.tenant_with_key(name, &["admin", "devices"]).await;
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
    let token = api
        .call(
            "POST",
            &format!("{base}/accounts/{}/enrolment_tokens", account["id"]),
            k,
            Some(json!({})),
        )
        .await
        .expect(201);
    let device = Device::enrol_and_connect(api, token["token"].as_str().unwrap()).await;
    let vault = VaultId::from_bytes([u8::try_from(t % 200).unwrap() + 1; 16]);
    assert!(matches!(
        device.create_vault(vault).await,
        Response::VaultCreated(_)
    ));
    (t, key, device, vault)
}

fn chunk(n: u8) -> Vec<u8> {
    // Big enough to be a blob of its own for some, small enough to be packed for others.
    vec![
        n;
        if n.is_multiple_of(2) {
            2_000_000
        } else {
            3_000
        }
    ]
}

async fn put_chunks(device: &Device, vault: VaultId, range: std::ops::Range<u8>) {
    for n in range {
        let r = device.put_chunk(vault, n, &chunk(n)).await;
        assert!(matches!(r, Response::ChunkStored(_)), "chunk {n}: {r:?}");
    }
}

async fn all_readable(device: &Device, vault: VaultId, range: std::ops::Range<u8>) {
    for n in range {
        let r = device.get_chunk(vault, n).await;
        assert!(matches!(r, Response::ChunkData(_)), "chunk {n}: {r:?}");
    }
}

async fn keys_under(store: &dyn BlobStore, tenant: u64) -> usize {
    let prefix = BlobKey::new(&tenant.to_string()).unwrap();
    store.list(Some(&prefix)).await.unwrap().len()
}

/// Polls `GET .../storage` until the move is over.
async fn ready(api: &TestApi, key: &str, t: u64) -> Value {
    within(async {
        loop {
            let s = api
                .call("GET", &format!("/v1/tenants/{t}/storage"), Some(key), None)
                .await
                .expect(200);
            if s["state"] == "ready" {
                return s;
            }
            assert_ne!(s["state"], "failed", "{s}");
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_to_its_own_bucket_and_back_while_reads_keep_working() {
    let api = TestApi::start().await;
    let s3 = S3Server::start().await.unwrap();
    let bucket_store = s3.config().with_path_style(true).open().unwrap();
    let (t, key, device, vault) = tenant_with_device(&api, "byob").await;
    let (other, _, other_device, other_vault) = tenant_with_device(&api, "plain").await;
    put_chunks(&device, vault, 0..12).await;
    put_chunks(&other_device, other_vault, 0..4).await;
    api.server().seal_open_packs().await;
    let default = api.server().default_blobs().clone();
    let before = keys_under(default.as_ref(), t).await;
    assert!(before >= 7, "{before} blobs");
    let k = Some(key.as_str());
    let storage = format!("/v1/tenants/{t}/storage");
    let fresh = api.call("GET", &storage, k, None).await.expect(200);
    assert_eq!(fresh["kind"], "default");
    assert_eq!(fresh["state"], "ready");

    // Wrong credentials: refused with the bucket's own complaint, nothing changes.
    let wrong = api
        .call(
            "PUT",
            &storage,
            k,
            Some(json!({
                "endpoint": s3.endpoint(), "bucket": BUCKET, "path_style": true,
                "access_key_id": ACCESS_KEY, "secret_access_key": "not-the-secret",
            })),
        )
        .await
        .problem(422);
    assert!(
        wrong["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{wrong}"
    );
    let no_bucket = api
        .call(
            "PUT",
            &storage,
            k,
            Some(json!({
                "endpoint": s3.endpoint(), "bucket": "no-such-bucket", "path_style": true,
                "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
            })),
        )
        .await
        .problem(422);
    assert!(
        no_bucket["detail"].as_str().unwrap().contains("bucket"),
        "{no_bucket}"
    );
    assert_eq!(
        api.call("GET", &storage, k, None).await.expect(200)["kind"],
        "default"
    );

    // The right ones: the tenant moves; reads work at once and all along.
    let set = api
        .call(
            "PUT",
            &storage,
            k,
            Some(json!({
                "endpoint": s3.endpoint(), "bucket": BUCKET, "path_style": true,
                "region": "us-east-1", "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            })),
        )
        .await
        .expect(200);
    assert_eq!(set["kind"], "s3");
    assert_eq!(set["bucket"], BUCKET);
    assert_eq!(set["access_key_hint"], &ACCESS_KEY[ACCESS_KEY.len() - 4..]);
    assert!(set.get("secret_access_key").is_none());
    all_readable(&device, vault, 0..12).await;
    let done = ready(&api, &key, t).await;
    assert_eq!(
        done["migration"]["moved"], done["migration"]["total"],
        "{done}"
    );
    assert_eq!(done["migration"]["total"].as_u64().unwrap(), before as u64);
    assert_eq!(keys_under(default.as_ref(), t).await, 0);
    assert_eq!(keys_under(bucket_store.as_ref(), t).await, before);
    all_readable(&device, vault, 0..12).await;

    // The same bucket again (new credentials, say): nothing moves, nothing is lost.
    let again = api
        .call(
            "PUT",
            &storage,
            k,
            Some(json!({
                "endpoint": s3.endpoint(), "bucket": BUCKET, "path_style": true,
                "region": "us-east-1", "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            })),
        )
        .await
        .expect(200);
    assert_eq!(again["state"], "ready", "{again}");
    assert_eq!(keys_under(bucket_store.as_ref(), t).await, before);
    all_readable(&device, vault, 0..12).await;

    // New chunks go to the tenant's bucket; the other tenant stays on the default backend.
    put_chunks(&device, vault, 12..16).await;
    put_chunks(&other_device, other_vault, 4..6).await;
    api.server().seal_open_packs().await;
    assert!(keys_under(bucket_store.as_ref(), t).await > before);
    assert_eq!(keys_under(default.as_ref(), t).await, 0);
    assert_eq!(keys_under(bucket_store.as_ref(), other).await, 0);
    assert!(keys_under(default.as_ref(), other).await > 0);
    all_readable(&other_device, other_vault, 0..6).await;

    // The secret is sealed: it appears nowhere in the data dir.
    for entry in walk(api.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !contains(&bytes, SECRET_KEY.as_bytes()),
            "{} holds the bucket's secret in plaintext",
            entry.display()
        );
    }

    // Back to the default backend: the blobs move back, reads keep working.
    let in_bucket = keys_under(bucket_store.as_ref(), t).await;
    let reset = api.call("DELETE", &storage, k, None).await.expect(200);
    assert_eq!(reset["kind"], "default");
    all_readable(&device, vault, 0..16).await;
    ready(&api, &key, t).await;
    assert_eq!(keys_under(bucket_store.as_ref(), t).await, 0);
    assert_eq!(keys_under(default.as_ref(), t).await, in_bucket);
    all_readable(&device, vault, 0..16).await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

//! No secret (admin token, API key, enrolment token) is stored or logged in plaintext.

use std::path::Path;

use serde_json::json;

use crate::harness::{TestApi, captured_logs};

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn secrets_are_neither_stored_nor_logged_in_plaintext() {
    let mut api = TestApi::start().await;
    let (t, key) = api.tenant_with_key("secretive", &["admin"]).await;
    let k = Some(key.as_str());
    let account = api
        .call(
            "POST",
            &format!("/v1/tenants/{t}/accounts"),
            k,
            Some(json!({"name": "u"})),
        )
        .await
        .expect(201);
    // Through the idempotency store too: responses holding secrets are kept encrypted.
    let token = api
        .call_with(
            "POST",
            &format!(
                "/v1/tenants/{t}/accounts/{}/enrolment_tokens",
                account["id"]
            ),
            k,
            Some(json!({"reusable": true})),
            &[("idempotency-key", "token-1")],
        )
        .await
        .expect(201);
    let token = token["token"].as_str().unwrap().to_owned();
    let second_key = api
        .call_with(
            "POST",
            &format!("/v1/tenants/{t}/api_keys"),
            k,
            Some(json!({"name": "ci", "scopes": ["devices"]})),
            &[("idempotency-key", "key-1")],
        )
        .await
        .expect(201);
    let second_key = second_key["secret"].as_str().unwrap().to_owned();
    // The replay still shows the secret to the caller who holds the credential.
    let replay = api
        .call_with(
            "POST",
            &format!("/v1/tenants/{t}/api_keys"),
            k,
            Some(json!({"name": "ci", "scopes": ["devices"]})),
            &[("idempotency-key", "key-1")],
        )
        .await
        .expect(201);
    assert_eq!(replay["secret"], second_key.as_str());
    // Use every secret once more so that any logging of requests would show them.
    api.call("GET", &format!("/v1/tenants/{t}"), Some(&second_key), None)
        .await
        .expect(200);
    api.call("GET", "/v1/tenants", Some(&api.admin.clone()), None)
        .await
        .expect(200);
    api.stop().await;

    let secrets = [api.admin.clone(), key, second_key, token];
    let mut all = Vec::new();
    files(api.dir.path(), &mut all);
    assert!(all.len() > 3, "the data dir has files: {all:?}");
    for path in &all {
        let bytes = std::fs::read(path).unwrap();
        for secret in &secrets {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "a secret is in plaintext in {}",
                path.display()
            );
        }
    }
    let logs = captured_logs();
    assert!(
        logs.contains("request_id="),
        "the control plane's request logs were captured"
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
    }
}

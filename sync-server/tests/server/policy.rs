//! Account policies on the data plane: subscription access and quotas, checked before anything
//! is accepted.

use std::sync::{Arc, Mutex};

use dooz_protocol::{
    ChunkId, CreateVault, Epoch, ErrorCode, ErrorResponse, Extensions, GetChunk, Have, History,
    ListVaults, Pull, PutChunk, PutEnvelope, Resource, Response, Seq, Subscribe, VaultId,
};
use dooz_server::policy::{Access, AccountPolicy, Limit, Limits, PolicySource};
use dooz_server::service::EnrolRequest;
use dooz_server::tls::{DeviceCert, ENROL_ALPN};
use dooz_server::{AccountId, StoreError, TenantId};

use crate::commit::{commit, entry};
use crate::harness::{Client, TestServer, device_id, expect_error, vault, within};

/// A policy source whose one policy (for every account) the test changes at will.
#[derive(Clone)]
pub(crate) struct TestPolicy(Arc<Mutex<AccountPolicy>>);

impl TestPolicy {
    pub(crate) fn new(policy: AccountPolicy) -> Self {
        Self(Arc::new(Mutex::new(policy)))
    }

    /// Sets the policy and makes the server see it at once.
    fn set(&self, server: &TestServer, policy: AccountPolicy) {
        *self.0.lock().unwrap() = policy;
        server.server.forget_cached_policies();
    }
}

#[async_trait::async_trait]
impl PolicySource for TestPolicy {
    async fn account_policy(
        &self,
        _tenant: TenantId,
        _account: AccountId,
        _now: u64,
    ) -> Result<AccountPolicy, StoreError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

fn with_limits(limits: Limits) -> AccountPolicy {
    AccountPolicy {
        access: Access::Full,
        limits,
    }
}

fn with_access(access: Access) -> AccountPolicy {
    AccountPolicy {
        access,
        limits: Limits::default(),
    }
}

async fn start(policy: AccountPolicy) -> (TestServer, TestPolicy) {
    let source = TestPolicy::new(policy);
    let server = TestServer::start_with_policy(Arc::new(source.clone())).await;
    (server, source)
}

/// As [`start`], with packing off, so that each upload shows in the stored bytes at once
/// (`pack::quota_counts_chunks_in_packs_not_written_yet` covers packing).
async fn start_unpacked(policy: AccountPolicy) -> (TestServer, TestPolicy) {
    let source = TestPolicy::new(policy);
    let shared = source.clone();
    let server = TestServer::start_with(
        |s| s.pack_max_chunk_bytes = 0,
        |mut parts| {
            parts.policy = Arc::new(shared);
            parts
        },
    )
    .await;
    (server, source)
}

fn body(n: u8, len: usize) -> Vec<u8> {
    vec![n; len]
}

async fn put(client: &Client, v: VaultId, n: u8, body: &[u8]) -> Response {
    let req = PutChunk {
        vault: v,
        chunk: ChunkId::from_bytes([n; 32]),
        len: u32::try_from(body.len()).unwrap(),
        blake3: *blake3::hash(body).as_bytes(),
        ext: Extensions::new(),
    };
    client.put_chunk(req, body).await
}

fn stored(response: Response) {
    assert!(
        matches!(response, Response::ChunkStored(_)),
        "expected ChunkStored, got {response:?}"
    );
}

fn inactive(response: Response) -> ErrorResponse {
    let err = expect_error(response);
    assert_eq!(err.code, ErrorCode::SubscriptionInactive, "{}", err.message);
    err
}

async fn missing(client: &Client, v: VaultId, n: u8) -> bool {
    match client
        .request(Have {
            vault: v,
            chunks: vec![ChunkId::from_bytes([n; 32])],
            ext: Extensions::new(),
        })
        .await
    {
        Response::Missing(m) => !m.chunks.is_empty(),
        other => panic!("unexpected answer to Have: {other:?}"),
    }
}

#[tokio::test]
async fn storage_quota_is_checked_before_bytes_are_stored() {
    within(async {
        let limits = Limits {
            storage_bytes: Some(Limit::hard(1000)),
            ..Limits::default()
        };
        let (server, policy) = start_unpacked(with_limits(limits.clone())).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(1);
        client.create_vault(v).await;

        stored(put(&client, v, 1, &body(1, 600)).await);
        // 600 + 600 > 1000: refused with the numbers, and nothing stored.
        let err = expect_error(put(&client, v, 2, &body(2, 600)).await);
        assert_eq!(
            err.code,
            ErrorCode::QuotaExceeded {
                resource: Resource::StorageBytes,
                limit: 1000,
                used: 600
            }
        );
        assert!(err.message.contains("quota is full"), "{}", err.message);
        assert!(missing(&client, v, 2).await);
        let usage = server
            .server
            .store()
            .account_usage(server.account.id)
            .await
            .unwrap();
        assert_eq!(usage.stored_bytes, 600);

        // A chunk the vault has already costs nothing, even at the limit.
        stored(put(&client, v, 1, &body(1, 600)).await);
        // What fits still goes in.
        stored(put(&client, v, 3, &body(3, 400)).await);
        let err = expect_error(put(&client, v, 4, &body(4, 1)).await);
        assert!(
            matches!(err.code, ErrorCode::QuotaExceeded { used: 1000, .. }),
            "{err:?}"
        );

        // Raising the limit lets the same upload through.
        policy.set(
            &server,
            with_limits(Limits {
                storage_bytes: Some(Limit::hard(2000)),
                ..limits
            }),
        );
        stored(put(&client, v, 2, &body(2, 600)).await);
        assert!(!missing(&client, v, 2).await);

        // A soft limit never refuses.
        policy.set(
            &server,
            with_limits(Limits {
                storage_bytes: Some(Limit::soft(10)),
                ..Limits::default()
            }),
        );
        stored(put(&client, v, 5, &body(5, 700)).await);
        let usage = server
            .server
            .store()
            .account_usage(server.account.id)
            .await
            .unwrap();
        assert_eq!(usage.stored_bytes, 600 + 400 + 600 + 700);
        server.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn read_only_allows_downloads_and_refuses_uploads() {
    within(async {
        let (server, policy) = start(AccountPolicy::unlimited()).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(2);
        client.create_vault(v).await;
        stored(put(&client, v, 1, &body(1, 100)).await);
        let e = entry(1, None, 1, vec![ChunkId::from_bytes([1; 32])]);
        assert!(matches!(
            commit(&client, v, vec![e]).await,
            Response::Committed(_)
        ));

        policy.set(&server, with_access(Access::ReadOnly));
        // Reads work.
        client.hello().await;
        match client
            .request(ListVaults {
                ext: Extensions::new(),
            })
            .await
        {
            Response::Vaults(vaults) => assert_eq!(vaults.vaults.len(), 1),
            other => panic!("unexpected answer to ListVaults: {other:?}"),
        }
        match client
            .request(Pull {
                vault: v,
                since: Seq::ZERO,
                limit: 0,
                ext: Extensions::new(),
            })
            .await
        {
            Response::Changes(changes) => assert_eq!(changes.changes.len(), 1),
            other => panic!("unexpected answer to Pull: {other:?}"),
        }
        match client
            .request(History {
                vault: v,
                entry: e_key(1),
                limit: 0,
                before: None,
                ext: Extensions::new(),
            })
            .await
        {
            Response::HistoryPage(page) => assert_eq!(page.versions.len(), 1),
            other => panic!("unexpected answer to History: {other:?}"),
        }
        let (_, got) = client
            .get_chunk(GetChunk {
                vault: v,
                chunk: ChunkId::from_bytes([1; 32]),
                ext: Extensions::new(),
            })
            .await
            .unwrap();
        assert_eq!(got.bytes.as_ref(), body(1, 100).as_slice());
        assert!(!missing(&client, v, 1).await);
        assert!(matches!(
            client
                .request(Subscribe {
                    vaults: vec![v],
                    ext: Extensions::new()
                })
                .await,
            Response::Subscribed(_)
        ));

        // Writes are refused, each with a message that says downloads still work.
        let err = inactive(put(&client, v, 2, &body(2, 100)).await);
        assert!(
            err.message.contains("downloads still work"),
            "{}",
            err.message
        );
        assert!(missing(&client, v, 2).await);
        inactive(commit(&client, v, vec![entry(2, None, 2, vec![])]).await);
        inactive(
            client
                .request(CreateVault {
                    vault: vault(3),
                    ext: Extensions::new(),
                })
                .await,
        );
        inactive(
            client
                .request(PutEnvelope {
                    vault: v,
                    epoch: Epoch::new(1),
                    recipient: device_id(&device),
                    envelope: vec![1; 32],
                    ext: Extensions::new(),
                })
                .await,
        );

        // Reactivated: writes work again, on the same connection.
        policy.set(&server, AccountPolicy::unlimited());
        stored(put(&client, v, 2, &body(2, 100)).await);
        server.server.shutdown().await;
    })
    .await;
}

fn e_key(n: u8) -> dooz_protocol::EntryKey {
    dooz_protocol::EntryKey::from_bytes([n; 32])
}

#[tokio::test]
async fn blocked_refuses_every_request_but_admits_the_connection() {
    within(async {
        let (server, policy) = start(AccountPolicy::unlimited()).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(4);
        client.create_vault(v).await;
        stored(put(&client, v, 1, &body(1, 10)).await);

        policy.set(&server, with_access(Access::Blocked));
        // A new connection is admitted, so that its requests get the clear error.
        let blocked = server.connect(&device).await;
        for c in [&client, &blocked] {
            let err = inactive(
                c.request(ListVaults {
                    ext: Extensions::new(),
                })
                .await,
            );
            assert!(err.message.contains("every request"), "{}", err.message);
            inactive(
                c.request(Pull {
                    vault: v,
                    since: Seq::ZERO,
                    limit: 0,
                    ext: Extensions::new(),
                })
                .await,
            );
            let err = c
                .get_chunk(GetChunk {
                    vault: v,
                    chunk: ChunkId::from_bytes([1; 32]),
                    ext: Extensions::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::SubscriptionInactive);
            inactive(put(c, v, 2, &body(2, 10)).await);
            inactive(
                c.request(Subscribe {
                    vaults: vec![v],
                    ext: Extensions::new(),
                })
                .await,
            );
        }

        policy.set(&server, AccountPolicy::unlimited());
        blocked.hello().await;
        assert!(!missing(&blocked, v, 1).await);
        server.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn vault_limit_counts_only_new_vaults() {
    within(async {
        let (server, _policy) = start(with_limits(Limits {
            vaults: Some(Limit::hard(1)),
            ..Limits::default()
        }))
        .await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        client.create_vault(vault(1)).await;
        // The same vault again is not a new one.
        client.create_vault(vault(1)).await;
        let err = expect_error(
            client
                .request(CreateVault {
                    vault: vault(2),
                    ext: Extensions::new(),
                })
                .await,
        );
        assert_eq!(
            err.code,
            ErrorCode::QuotaExceeded {
                resource: Resource::Vaults,
                limit: 1,
                used: 1
            }
        );
        assert!(
            server
                .server
                .store()
                .vault(vault(2))
                .await
                .unwrap()
                .is_none()
        );
        server.server.shutdown().await;
    })
    .await;
}

fn enrol_hello(token: &str) -> dooz_protocol::Hello {
    let request = EnrolRequest {
        token: token.to_owned(),
        exchange_key: [3; 32],
        device_name: "new device".to_owned(),
    };
    dooz_protocol::Hello {
        protocol_version: dooz_protocol::PROTOCOL_VERSION,
        client_name: "tests".to_owned(),
        client_version: "0".to_owned(),
        ext: Extensions::new().with(request.to_extension().unwrap()),
    }
}

async fn enrol(server: &TestServer, token: &str) -> (DeviceCert, Response) {
    let device = DeviceCert::generate().unwrap();
    let conn = server.try_connect(&device, ENROL_ALPN).await.unwrap();
    let answer = conn.request(enrol_hello(token)).await;
    (device, answer)
}

#[tokio::test]
async fn device_limit_is_checked_at_enrolment() {
    within(async {
        let (server, policy) = start(with_limits(Limits {
            devices: Some(Limit::hard(1)),
            ..Limits::default()
        }))
        .await;
        let first = server.enrolled_device().await;
        let token = server
            .server
            .store()
            .create_enrolment_token(server.account.id, u64::MAX / 2, true)
            .await
            .unwrap();

        let (refused, answer) = enrol(&server, token.expose()).await;
        let err = expect_error(answer);
        assert_eq!(
            err.code,
            ErrorCode::QuotaExceeded {
                resource: Resource::Devices,
                limit: 1,
                used: 1
            }
        );
        assert!(err.message.contains("Revoke a device"), "{}", err.message);
        assert!(
            server
                .server
                .store()
                .device(device_id(&refused))
                .await
                .unwrap()
                .is_none()
        );

        // A revoked device frees its place.
        server
            .server
            .revoke_device(device_id(&first))
            .await
            .unwrap();
        let (_, answer) = enrol(&server, token.expose()).await;
        assert!(matches!(answer, Response::HelloOk(_)), "{answer:?}");

        // A blocked subscription enrols nobody.
        policy.set(&server, with_access(Access::Blocked));
        let (_, answer) = enrol(&server, token.expose()).await;
        inactive(answer);
        server.server.shutdown().await;
    })
    .await;
}

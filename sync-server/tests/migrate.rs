//! `dooz-server migrate --from sled:DIR --to postgres://…`: a sled store with every kind of
//! record is copied into a fresh PostgreSQL schema (`DOOZ_TEST_POSTGRES`), verified by the
//! command, and then reads back the same through the `MetaStore` trait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;

use dooz_protocol::{ChunkId, CommitEntry, DeviceId, EntryKey, Epoch, Seq, VaultId, VersionId};
use dooz_server::{
    AccountId, DeviceRegistration, HOUR_SECS, MetaStore, PackId, PackedChunk, PgStore, SledStore,
    TenantId, TrafficCounts, TrafficKey,
};

const NOW: u64 = 1_700_000_000;

fn id<const N: usize>(tag: &str) -> [u8; N] {
    let mut out = [0u8; N];
    blake3::Hasher::new()
        .update(tag.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn registration(name: &str) -> DeviceRegistration {
    let identity_key: [u8; 32] = id(&format!("identity {name}"));
    DeviceRegistration {
        device: DeviceId::from_bytes(*blake3::hash(&identity_key).as_bytes()),
        identity_key,
        exchange_key: id(&format!("exchange {name}")),
        name: name.to_owned(),
    }
}

/// Fills a store with tenants, accounts, devices (one revoked), tokens, a vault with blob and
/// packed chunks, a commit log with several versions of an entry, envelopes, a rotation mark,
/// traffic and storage hours. Returns the account and vault.
async fn fill(store: &dyn MetaStore) -> (TenantId, AccountId, VaultId) {
    let tenant = store.create_tenant("acme").await.unwrap();
    store.create_tenant("other").await.unwrap();
    let account = store.create_account(tenant, "ana").await.unwrap();
    store.create_account(tenant, "bob").await.unwrap();
    let token = store
        .create_enrolment_token(account, NOW + 3600, true)
        .await
        .unwrap();
    let laptop = store
        .redeem_enrolment(token.expose(), registration("laptop"), NOW)
        .await
        .unwrap();
    let phone = store
        .redeem_enrolment(token.expose(), registration("phone"), NOW + 1)
        .await
        .unwrap();
    store
        .create_enrolment_token(account, NOW + 60, false)
        .await
        .unwrap();
    let vault = VaultId::from_bytes(id("vault"));
    store.create_vault(account, vault, NOW).await.unwrap();
    let chunks: Vec<ChunkId> = (0..6)
        .map(|i| ChunkId::from_bytes(id(&format!("chunk {i}"))))
        .collect();
    for (i, chunk) in chunks.iter().take(3).enumerate() {
        store
            .record_chunk(
                vault,
                *chunk,
                1000 + i as u64,
                id(&format!("sealed {i}")),
                NOW,
            )
            .await
            .unwrap();
    }
    let packed: Vec<PackedChunk> = chunks[3..]
        .iter()
        .enumerate()
        .map(|(i, chunk)| PackedChunk {
            chunk: *chunk,
            offset: i as u64 * 500,
            sealed_len: 500,
            blake3: id(&format!("packed {i}")),
        })
        .collect();
    store
        .record_packed_chunks(
            vault,
            PackId::from_bytes(id("pack")),
            1600,
            packed,
            NOW + 10,
        )
        .await
        .unwrap();
    let entry = EntryKey::from_bytes(id("entry"));
    let mut parent = None;
    for n in 0..4u64 {
        let version = VersionId::from_bytes(id(&format!("version {n}")));
        store
            .commit(
                vault,
                laptop.device,
                vec![CommitEntry {
                    entry,
                    parent,
                    version,
                    record: vec![n as u8; 50],
                    chunks: vec![chunks[n as usize], chunks[5]],
                    epoch: Epoch::new(1),
                }],
                NOW + 100 * n + HOUR_SECS * n,
            )
            .await
            .unwrap();
        parent = Some(version);
    }
    for (recipient, epoch) in [(laptop.device, 1), (phone.device, 1), (phone.device, 2)] {
        store
            .put_envelope(
                vault,
                Epoch::new(epoch),
                recipient,
                laptop.device,
                vec![epoch as u8; 80],
            )
            .await
            .unwrap();
    }
    store.revoke_device(phone.device, NOW + 500).await.unwrap();
    store
        .add_traffic(vec![
            (
                TrafficKey {
                    tenant,
                    hour: NOW / HOUR_SECS,
                    account,
                    vault: Some(vault),
                    device: Some(laptop.device),
                },
                TrafficCounts {
                    ingress_bytes: 12_345,
                    egress_bytes: 678,
                    requests: 9,
                },
            ),
            (
                TrafficKey {
                    tenant,
                    hour: NOW / HOUR_SECS + 1,
                    account,
                    vault: None,
                    device: None,
                },
                TrafficCounts {
                    ingress_bytes: 1,
                    egress_bytes: 2,
                    requests: 3,
                },
            ),
        ])
        .await
        .unwrap();
    (tenant, account, vault)
}

/// Everything the trait reads about the filled store, as one comparable string.
async fn snapshot(
    store: &dyn MetaStore,
    tenant: TenantId,
    account: AccountId,
    vault: VaultId,
) -> String {
    let mut out = String::new();
    let hours = 0..u64::MAX / HOUR_SECS;
    out += &format!("{:?}\n", store.tenant(tenant).await.unwrap());
    out += &format!("{:?}\n", store.tenant_by_name("other").await.unwrap());
    out += &format!(
        "{:?}\n",
        store.account_by_name(tenant, "bob").await.unwrap()
    );
    out += &format!("{:?}\n", store.list_devices(account).await.unwrap());
    out += &format!("{:?}\n", store.account_usage(account).await.unwrap());
    out += &format!("{:?}\n", store.list_vaults(account).await.unwrap());
    out += &format!("{:?}\n", store.vault(vault).await.unwrap());
    out += &format!("{:?}\n", store.pull(vault, Seq::ZERO, 0).await.unwrap());
    out += &format!(
        "{:?}\n",
        store
            .history(vault, EntryKey::from_bytes(id("entry")), 0, None)
            .await
            .unwrap()
    );
    let chunks: Vec<ChunkId> = (0..6)
        .map(|i| ChunkId::from_bytes(id(&format!("chunk {i}"))))
        .collect();
    out += &format!("{:?}\n", store.chunks(vault, &chunks).await.unwrap());
    out += &format!("{:?}\n", store.packs(vault).await.unwrap());
    let mut retained: Vec<ChunkId> = store
        .retained_chunks(vault)
        .await
        .unwrap()
        .into_iter()
        .collect();
    retained.sort();
    out += &format!("{retained:?}\n");
    for device in store.list_devices(account).await.unwrap() {
        out += &format!(
            "{:?}\n",
            store.envelopes_for(vault, device.device).await.unwrap()
        );
    }
    out += &format!("{:?}\n", store.rotations_due(account).await.unwrap());
    let mut traffic = store.traffic(None, hours.clone()).await.unwrap();
    traffic.sort_by_key(|(k, _)| *k);
    out += &format!("{traffic:?}\n");
    out += &format!(
        "{:?}\n",
        store
            .storage_hours(None, hours, NOW + 10 * HOUR_SECS)
            .await
            .unwrap()
    );
    out += &format!("{:?}\n", store.storage_gauges(None).await.unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_to_postgres_verified_and_reads_back_the_same() {
    let base = std::env::var("DOOZ_TEST_POSTGRES").expect(
        "DOOZ_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a \
         throwaway PostgreSQL",
    );
    let data_dir = tempfile::tempdir().unwrap();
    let meta = data_dir.path().join("meta");
    let (tenant, account, vault, before, gone) = {
        let sled = SledStore::open(&meta).unwrap();
        let (tenant, account, vault) = fill(&sled).await;
        // The newest account is deleted: its id must not be handed out again after the move
        // (its traffic rows still name it).
        let gone = sled.create_account(tenant, "carol").await.unwrap();
        sled.delete_account(gone, NOW).await.unwrap();
        let before = snapshot(&sled, tenant, account, vault).await;
        (tenant, account, vault, before, gone)
    };

    let schema = format!(
        "migrate_{}",
        blake3::hash(data_dir.path().to_string_lossy().as_bytes())
            .to_hex()
            .get(..12)
            .unwrap()
    );
    PgStore::connect_schema(&base, &schema, 2).await.unwrap();
    let url = format!("{base}?options=-c%20search_path%3D{schema}");
    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_dooz-server"))
            .args(["migrate", "--from"])
            .arg(format!("sled:{}", data_dir.path().display()))
            .args(["--to", &url])
            .output()
            .unwrap()
    };
    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Verified:"), "{stdout}");
    for table in ["tenants", "devices", "log", "traffic", "storage_hours"] {
        let line = stdout.lines().find(|l| l.starts_with(table)).unwrap();
        assert!(line.ends_with(" ok"), "{line}");
    }

    // A second run refuses to mix two stores.
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("holds data already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The trait reads the same from PostgreSQL, and new ids follow the migrated ones.
    let pg = PgStore::connect_schema(&base, &schema, 4).await.unwrap();
    let after = snapshot(&pg, tenant, account, vault).await;
    assert_eq!(before, after);
    let dave = pg.create_account(tenant, "dave").await.unwrap();
    assert!(
        dave.get() > gone.get(),
        "{dave:?} reuses an id at or below {gone:?}"
    );
    let fresh = pg.create_tenant("after the move").await.unwrap();
    assert!(fresh.get() > tenant.get() + 1, "{fresh:?}");
    let ids: HashSet<u64> = [tenant.get(), fresh.get()].into_iter().collect();
    assert_eq!(ids.len(), 2);

    // Bad arguments are refused with a clear message.
    let bad = Command::new(env!("CARGO_BIN_EXE_dooz-server"))
        .args(["migrate", "--from", "/nowhere", "--to", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sled:DIR"));
    let empty = tempfile::tempdir().unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_dooz-server"))
        .args(["migrate", "--from"])
        .arg(format!("sled:{}", empty.path().display()))
        .args(["--to", &url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no sled store"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

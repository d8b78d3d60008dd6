//! The conformance suite every [`MetaStore`] engine runs.
//!
//! Each check is an `async fn(Arc<dyn MetaStore>)` that makes its own tenant, account, devices
//! and vaults (names and ids derived from the check's name), so checks can share one store.
//! An engine runs them all with [`conformance_tests!`]:
//!
//! ```ignore
//! crate::store::conformance::conformance_tests!(SledStore::temporary().unwrap());
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use dooz_protocol::limits::{MAX_HISTORY_PAGE, MAX_PULL_PAGE};
use dooz_protocol::{
    Change, ChunkId, CommitEntry, CommitResult, DeviceId, EntryKey, Epoch, ErrorCode, ROSTER_EPOCH,
    Seq, VaultId, VersionId,
};

use crate::store::{
    AccountId, ChunkLocation, ChunkState, DeviceRegistration, EntryHead, HOUR_SECS, MetaStore,
    PackId, PackedChunk, StoreError, TenantId, TrafficCounts, TrafficKey,
};

/// A shared store handle, as the checks take it.
pub(crate) type Store = Arc<dyn MetaStore>;

const NOW: u64 = 1_700_000_000;

/// Generates one `#[tokio::test]` per check, each on a fresh store made by `$make`.
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::store::conformance::conformance_tests!(@each $make;
            tenants_and_accounts,
            enrolment_one_use_token,
            enrolment_reusable_and_expired_tokens,
            enrolment_refuses_known_and_mismatched_devices,
            devices_touch_and_revoke,
            vault_ownership,
            chunks_pending_then_committed,
            concurrent_records_of_one_chunk_count_once,
            commit_cas_conflict_takes_no_seq,
            seqs_stay_gap_free_across_conflicts,
            concurrent_commits_keep_log_and_chains,
            missing_chunks_apply_nothing,
            pull_pages,
            history_pages,
            envelopes,
            epochs_rosters_and_rotation_marks,
            unknown_vault_is_not_found,
            account_usage_counts,
            forget_lost_pending_chunks,
            packed_chunks_are_located_and_counted,
            collect_only_chunks_still_pending,
            retention_forgets_old_versions_and_releases_their_chunks,
            repacked_chunks_move_only_from_where_they_are,
            delete_account_removes_everything_of_it,
            traffic_counters_add_up_per_key_and_hour,
            storage_hours_integrate_the_gauge_exactly,
        );
    };
    (@each $make:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store: $crate::store::conformance::Store = ::std::sync::Arc::new($make);
                $crate::store::conformance::$check(store).await;
            }
        )*
    };
}
pub(crate) use conformance_tests;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn id<const N: usize>(tag: &str, n: u64) -> [u8; N] {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    h.update(&n.to_be_bytes());
    let mut out = [0u8; N];
    h.finalize_xof().fill(&mut out);
    out
}

fn vault_id(tag: &str, n: u64) -> VaultId {
    VaultId::from_bytes(id(&format!("vault {tag}"), n))
}

fn entry(tag: &str, n: u64) -> EntryKey {
    EntryKey::from_bytes(id(&format!("entry {tag}"), n))
}

fn version(tag: &str, n: u64) -> VersionId {
    VersionId::from_bytes(id(&format!("version {tag}"), n))
}

fn chunk(tag: &str, n: u64) -> ChunkId {
    ChunkId::from_bytes(id(&format!("chunk {tag}"), n))
}

fn registration(tag: &str, n: u64) -> DeviceRegistration {
    let identity_key: [u8; 32] = id(&format!("identity {tag}"), n);
    DeviceRegistration {
        device: DeviceId::from_bytes(*blake3::hash(&identity_key).as_bytes()),
        identity_key,
        exchange_key: id(&format!("exchange {tag}"), n),
        name: format!("device {n} of {tag}"),
    }
}

fn commit_entry(
    entry: EntryKey,
    parent: Option<VersionId>,
    version: VersionId,
    chunks: Vec<ChunkId>,
) -> CommitEntry {
    CommitEntry {
        entry,
        parent,
        version,
        record: version.as_bytes().repeat(3),
        chunks,
        epoch: Epoch::new(1),
    }
}

/// A tenant, an account with one enrolled device, and one vault.
struct Fixture {
    tenant: TenantId,
    account: AccountId,
    device: DeviceId,
    vault: VaultId,
}

async fn fixture(store: &Store, tag: &str) -> Fixture {
    let tenant = store.create_tenant(&format!("tenant {tag}")).await.unwrap();
    let account = store
        .create_account(tenant, &format!("account {tag}"))
        .await
        .unwrap();
    let token = store
        .create_enrolment_token(account, NOW + 3600, false)
        .await
        .unwrap();
    let reg = registration(tag, 0);
    let device = store
        .redeem_enrolment(token.expose(), reg, NOW)
        .await
        .unwrap()
        .device;
    let vault = vault_id(tag, 0);
    store.create_vault(account, vault, NOW).await.unwrap();
    Fixture {
        tenant,
        account,
        device,
        vault,
    }
}

fn applied_seq(r: &CommitResult) -> Seq {
    match r {
        CommitResult::Applied { seq, .. } => *seq,
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// Commits one entry and expects it applied.
async fn commit_one(store: &Store, f: &Fixture, e: CommitEntry) -> Seq {
    let results = store.commit(f.vault, f.device, vec![e], NOW).await.unwrap();
    assert_eq!(results.len(), 1);
    applied_seq(&results[0])
}

/// The whole log, paging with `limit`.
async fn pull_all(store: &Store, vault: VaultId, limit: u32) -> Vec<Change> {
    let mut all = Vec::new();
    let mut since = Seq::ZERO;
    loop {
        let page = store.pull(vault, since, limit).await.unwrap();
        assert!(page.changes.len() <= limit as usize || limit == 0);
        all.extend(page.changes);
        since = page.next;
        if !page.more {
            return all;
        }
    }
}

/// Seqs are exactly `1..=head` and every entry's versions chain through their parents.
async fn assert_log_consistent(store: &Store, vault: VaultId) -> Vec<Change> {
    let head = store.head(vault).await.unwrap();
    let log = pull_all(store, vault, 7).await;
    let seqs: Vec<u64> = log.iter().map(|c| c.seq.get()).collect();
    let want: Vec<u64> = (1..=head.get()).collect();
    assert_eq!(seqs, want, "the log must hold 1..=head without gaps");
    let mut heads: HashMap<EntryKey, VersionId> = HashMap::new();
    for c in &log {
        assert_eq!(
            c.parent,
            heads.get(&c.entry).copied(),
            "seq {} breaks the chain of {}",
            c.seq,
            c.entry
        );
        heads.insert(c.entry, c.version);
    }
    for (e, v) in heads {
        assert_eq!(
            store.entry_head(vault, e).await.unwrap().map(|h| h.version),
            Some(v)
        );
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Checks

pub(crate) async fn tenants_and_accounts(store: Store) {
    let t = store.create_tenant("acme").await.unwrap();
    let t2 = store.create_tenant("globex").await.unwrap();
    assert_ne!(t, t2);
    assert!(matches!(
        store.create_tenant("acme").await,
        Err(StoreError::AlreadyExists { .. })
    ));
    for bad in ["", "bad\nname", &"x".repeat(300)] {
        let e = store.create_tenant(bad).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidInput { .. }), "{bad:?}: {e}");
        assert_eq!(e.to_error_code(), ErrorCode::BadRequest);
    }
    assert_eq!(store.tenant(t).await.unwrap().unwrap().name, "acme");
    assert_eq!(
        store.tenant_by_name("globex").await.unwrap().unwrap().id,
        t2
    );
    assert_eq!(store.tenant_by_name("initech").await.unwrap(), None);
    assert_eq!(store.tenant(TenantId::new(999_999)).await.unwrap(), None);

    let a = store.create_account(t, "ana").await.unwrap();
    // The same account name is fine in another tenant, not twice in one.
    let a2 = store.create_account(t2, "ana").await.unwrap();
    assert_ne!(a, a2);
    assert!(matches!(
        store.create_account(t, "ana").await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_account(TenantId::new(999_999), "bob").await,
        Err(StoreError::NotFound { .. })
    ));
    let rec = store.account(a).await.unwrap().unwrap();
    assert_eq!((rec.tenant, rec.name.as_str()), (t, "ana"));
    assert_eq!(
        store.account_by_name(t2, "ana").await.unwrap().unwrap().id,
        a2
    );
    assert_eq!(store.account_by_name(t, "bob").await.unwrap(), None);
    assert_eq!(store.account(AccountId::new(999_999)).await.unwrap(), None);
}

pub(crate) async fn enrolment_one_use_token(store: Store) {
    let t = store.create_tenant("enrol-once").await.unwrap();
    let a = store.create_account(t, "ana").await.unwrap();
    let token = store
        .create_enrolment_token(a, NOW + 60, false)
        .await
        .unwrap();
    assert!(!format!("{token:?}").contains(token.expose()));

    let reg = registration("enrol-once", 1);
    let d = store
        .redeem_enrolment(token.expose(), reg.clone(), NOW)
        .await
        .unwrap();
    assert_eq!(d.device, reg.device);
    assert_eq!((d.tenant, d.account), (t, a));
    assert_eq!(d.identity_key, reg.identity_key);
    assert_eq!(d.exchange_key, reg.exchange_key);
    assert_eq!(d.name, reg.name);
    assert_eq!((d.created_at, d.last_seen, d.revoked_at), (NOW, NOW, None));
    assert_eq!(store.device(reg.device).await.unwrap(), Some(d));

    // Burnt: another device cannot use it.
    let e = store
        .redeem_enrolment(token.expose(), registration("enrol-once", 2), NOW + 1)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::TokenUsed), "{e}");
    assert_eq!(e.to_error_code(), ErrorCode::Unauthenticated);
    assert_eq!(
        store
            .device(registration("enrol-once", 2).device)
            .await
            .unwrap(),
        None
    );

    // Unknown and malformed tokens.
    for bad in ["et1_aaaaaaaaaaaaaaaaaaaaaaaaaa", "", "   "] {
        let e = store
            .redeem_enrolment(bad, registration("enrol-once", 3), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::TokenInvalid), "{bad:?}: {e}");
    }
    // A token for an unknown account cannot be minted.
    assert!(matches!(
        store
            .create_enrolment_token(AccountId::new(999_999), NOW + 60, false)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(crate) async fn enrolment_reusable_and_expired_tokens(store: Store) {
    let t = store.create_tenant("enrol-reuse").await.unwrap();
    let a = store.create_account(t, "ana").await.unwrap();
    let reusable = store
        .create_enrolment_token(a, NOW + 60, true)
        .await
        .unwrap();
    for n in 0..3 {
        store
            .redeem_enrolment(reusable.expose(), registration("enrol-reuse", n), NOW)
            .await
            .unwrap();
    }
    assert_eq!(store.list_devices(a).await.unwrap().len(), 3);

    // Expired at `expires_at` exactly, reusable or not.
    let e = store
        .redeem_enrolment(reusable.expose(), registration("enrol-reuse", 9), NOW + 60)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::TokenExpired), "{e}");
    let once = store
        .create_enrolment_token(a, NOW + 10, false)
        .await
        .unwrap();
    let e = store
        .redeem_enrolment(once.expose(), registration("enrol-reuse", 9), NOW + 11)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::TokenExpired), "{e}");
    // Whitespace around a pasted token is fine.
    store
        .redeem_enrolment(
            &format!(" {}\n", once.expose()),
            registration("enrol-reuse", 9),
            NOW + 9,
        )
        .await
        .unwrap();
}

pub(crate) async fn enrolment_refuses_known_and_mismatched_devices(store: Store) {
    let f = fixture(&store, "enrol-known").await;
    let token = store
        .create_enrolment_token(f.account, NOW + 60, false)
        .await
        .unwrap();
    // Already registered: refused, and the one-use token is not burnt by the failure.
    let e = store
        .redeem_enrolment(token.expose(), registration("enrol-known", 0), NOW)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    // A device id that is not the hash of its identity key.
    let mut forged = registration("enrol-known", 5);
    forged.device = f.device;
    let e = store
        .redeem_enrolment(token.expose(), forged, NOW)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
    let mut unnamed = registration("enrol-known", 5);
    unnamed.name = String::new();
    assert!(matches!(
        store.redeem_enrolment(token.expose(), unnamed, NOW).await,
        Err(StoreError::InvalidInput { .. })
    ));
    // Still usable once.
    store
        .redeem_enrolment(token.expose(), registration("enrol-known", 5), NOW)
        .await
        .unwrap();
}

pub(crate) async fn devices_touch_and_revoke(store: Store) {
    let f = fixture(&store, "devices").await;
    let token = store
        .create_enrolment_token(f.account, NOW + 60, true)
        .await
        .unwrap();
    let other = store
        .redeem_enrolment(token.expose(), registration("devices", 1), NOW)
        .await
        .unwrap()
        .device;

    let d = store.touch_device(f.device, NOW + 50).await.unwrap();
    assert_eq!(d.last_seen, NOW + 50);
    // last_seen never goes back.
    let d = store.touch_device(f.device, NOW + 10).await.unwrap();
    assert_eq!(d.last_seen, NOW + 50);

    let r = store.revoke_device(f.device, NOW + 100).await.unwrap();
    assert_eq!(r.revoked_at, Some(NOW + 100));
    assert!(r.is_revoked());
    // Idempotent: the first revocation time stays.
    let r = store.revoke_device(f.device, NOW + 200).await.unwrap();
    assert_eq!(r.revoked_at, Some(NOW + 100));

    let e = store.touch_device(f.device, NOW + 300).await.unwrap_err();
    assert!(
        matches!(e, StoreError::DeviceRevoked { device } if device == f.device),
        "{e}"
    );
    assert_eq!(e.to_error_code(), ErrorCode::Revoked);
    // A revoked device cannot enrol again.
    let e = store
        .redeem_enrolment(token.expose(), registration("devices", 0), NOW)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DeviceRevoked { .. }), "{e}");
    // The other device is unaffected.
    store.touch_device(other, NOW + 300).await.unwrap();

    // Renaming keeps everything else, revoked or not; bad names are refused.
    let renamed = store.rename_device(f.device, "old laptop").await.unwrap();
    assert_eq!(renamed.name, "old laptop");
    assert_eq!(renamed.revoked_at, Some(NOW + 100));
    assert_eq!(store.device(f.device).await.unwrap().unwrap(), renamed);
    assert!(matches!(
        store.rename_device(f.device, "").await,
        Err(StoreError::InvalidInput { .. })
    ));

    let unknown = registration("devices", 99).device;
    assert!(matches!(
        store.touch_device(unknown, NOW).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.revoke_device(unknown, NOW).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.rename_device(unknown, "x").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.device(unknown).await.unwrap(), None);

    let mut listed: Vec<(DeviceId, bool)> = store
        .list_devices(f.account)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.device, d.is_revoked()))
        .collect();
    listed.sort();
    let mut want = vec![(f.device, true), (other, false)];
    want.sort();
    assert_eq!(listed, want);
    assert!(matches!(
        store.list_devices(AccountId::new(999_999)).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(crate) async fn vault_ownership(store: Store) {
    let f = fixture(&store, "ownership").await;
    let other = store
        .create_account(f.tenant, "someone else")
        .await
        .unwrap();

    // Idempotent for the owner.
    let again = store
        .create_vault(f.account, f.vault, NOW + 5)
        .await
        .unwrap();
    assert_eq!(again.created_at, NOW);
    assert_eq!((again.account, again.tenant), (f.account, f.tenant));
    // Refused for anyone else.
    let e = store.create_vault(other, f.vault, NOW).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    assert_eq!(e.to_error_code(), ErrorCode::AlreadyExists);
    assert!(matches!(
        store
            .create_vault(AccountId::new(999_999), vault_id("ownership", 9), NOW)
            .await,
        Err(StoreError::NotFound { .. })
    ));

    assert_eq!(store.vault_account(f.vault).await.unwrap(), Some(f.account));
    assert_eq!(
        store
            .vault_account(vault_id("ownership", 404))
            .await
            .unwrap(),
        None
    );

    let second = vault_id("ownership", 1);
    store.create_vault(f.account, second, NOW).await.unwrap();
    let theirs = vault_id("ownership", 2);
    store.create_vault(other, theirs, NOW).await.unwrap();
    commit_one(
        &store,
        &f,
        CommitEntry {
            epoch: Epoch::new(3),
            ..commit_entry(entry("ownership", 0), None, version("ownership", 0), vec![])
        },
    )
    .await;

    let mut mine = store.list_vaults(f.account).await.unwrap();
    mine.sort_by_key(|v| v.vault);
    let mut want = vec![
        dooz_protocol::VaultInfo {
            vault: f.vault,
            head_seq: Seq::new(1),
            latest_epoch: Epoch::new(3),
        },
        dooz_protocol::VaultInfo {
            vault: second,
            head_seq: Seq::ZERO,
            latest_epoch: Epoch::ZERO,
        },
    ];
    want.sort_by_key(|v| v.vault);
    assert_eq!(mine, want);
    let theirs_listed: Vec<VaultId> = store
        .list_vaults(other)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.vault)
        .collect();
    assert_eq!(theirs_listed, vec![theirs]);
    let rec = store.vault(f.vault).await.unwrap().unwrap();
    assert_eq!(
        rec.info(),
        want.iter().find(|v| v.vault == f.vault).unwrap().clone()
    );
}

/// Several uploads of one chunk at once (through several instances, or a pack being sealed
/// while the chunk is uploaded alone) record it once, and never undo its commit.
pub(crate) async fn concurrent_records_of_one_chunk_count_once(store: Store) {
    let f = fixture(&store, "race").await;
    let c = chunk("race", 0);
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let store = Arc::clone(&store);
        let vault = f.vault;
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                store
                    .record_chunk(vault, c, 300, [7; 32], NOW)
                    .await
                    .unwrap();
            } else {
                let pack = PackId::from_bytes(id("race pack", n));
                let packed = vec![PackedChunk {
                    chunk: c,
                    offset: 0,
                    sealed_len: 300,
                    blake3: [7; 32],
                }];
                store
                    .record_packed_chunks(vault, pack, 300, packed, NOW)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        300
    );
    let e = commit_entry(entry("race", 0), None, version("race", 0), vec![c]);
    commit_one(&store, &f, e).await;
    // Uploads with other bytes racing each other after the commit change nothing.
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let store = Arc::clone(&store);
        let vault = f.vault;
        tasks.push(tokio::spawn(async move {
            store
                .record_chunk(vault, c, 400 + n, [n as u8; 32], NOW + 1)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let record = store.chunk(f.vault, c).await.unwrap().unwrap();
    assert_eq!((record.sealed_len, record.blake3), (300, [7; 32]));
    assert!(matches!(record.state, ChunkState::Committed { .. }));
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        300
    );
}

pub(crate) async fn chunks_pending_then_committed(store: Store) {
    let f = fixture(&store, "chunks").await;
    let [c0, c1, c2] = [0, 1, 2].map(|n| chunk("chunks", n));
    store
        .record_chunk(f.vault, c1, 100, [1; 32], NOW)
        .await
        .unwrap();
    // Order kept, duplicates reported once.
    assert_eq!(
        store
            .missing_chunks(f.vault, &[c2, c1, c0, c2])
            .await
            .unwrap(),
        vec![c2, c0]
    );
    assert_eq!(store.missing_chunks(f.vault, &[]).await.unwrap(), vec![]);
    let rec = store.chunk(f.vault, c1).await.unwrap().unwrap();
    assert_eq!(rec.chunk, c1);
    assert_eq!((rec.sealed_len, rec.blake3), (100, [1; 32]));
    assert_eq!(rec.state, ChunkState::Pending { since: NOW });
    // Chunks belong to one vault.
    let other = vault_id("chunks", 1);
    store.create_vault(f.account, other, NOW).await.unwrap();
    assert_eq!(store.missing_chunks(other, &[c1]).await.unwrap(), vec![c1]);
    assert_eq!(store.chunk(other, c1).await.unwrap(), None);

    // Same upload again: no-op. A pending chunk sealed again takes the new bytes' hash.
    let again = store
        .record_chunk(f.vault, c1, 100, [1; 32], NOW + 5)
        .await
        .unwrap();
    assert_eq!(again.state, ChunkState::Pending { since: NOW });
    let resealed = store
        .record_chunk(f.vault, c1, 101, [2; 32], NOW + 6)
        .await
        .unwrap();
    assert_eq!((resealed.sealed_len, resealed.blake3), (101, [2; 32]));

    store
        .record_chunk(f.vault, c0, 50, [3; 32], NOW)
        .await
        .unwrap();
    commit_one(
        &store,
        &f,
        commit_entry(entry("chunks", 0), None, version("chunks", 0), vec![c1, c1]),
    )
    .await;
    let rec = store.chunk(f.vault, c1).await.unwrap().unwrap();
    assert_eq!(rec.state, ChunkState::Committed { at: NOW });
    assert_eq!(rec.blake3, [2; 32]);
    // Not referenced: still pending.
    assert!(matches!(
        store.chunk(f.vault, c0).await.unwrap().unwrap().state,
        ChunkState::Pending { .. }
    ));
    // A committed chunk's record never changes.
    let kept = store
        .record_chunk(f.vault, c1, 7, [9; 32], NOW + 9)
        .await
        .unwrap();
    assert_eq!((kept.sealed_len, kept.blake3), (101, [2; 32]));
    assert_eq!(kept.state, ChunkState::Committed { at: NOW });
}

pub(crate) async fn commit_cas_conflict_takes_no_seq(store: Store) {
    let f = fixture(&store, "cas").await;
    let (e0, e1) = (entry("cas", 0), entry("cas", 1));
    let (v0, v1, v2, v3) = (
        version("cas", 0),
        version("cas", 1),
        version("cas", 2),
        version("cas", 3),
    );
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::ZERO);
    assert_eq!(store.entry_head(f.vault, e0).await.unwrap(), None);
    assert_eq!(
        commit_one(&store, &f, commit_entry(e0, None, v0, vec![])).await,
        Seq::new(1)
    );
    assert_eq!(
        store.entry_head(f.vault, e0).await.unwrap(),
        Some(EntryHead {
            version: v0,
            seq: Seq::new(1)
        })
    );

    // "Must not exist yet" on an existing entry, and a stale parent: both conflicts.
    let results = store
        .commit(
            f.vault,
            f.device,
            vec![
                commit_entry(e0, None, v1, vec![]),
                commit_entry(e1, None, v2, vec![]),
                commit_entry(e0, Some(v2), v1, vec![]),
                commit_entry(e0, Some(v0), v3, vec![]),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            CommitResult::Conflict {
                entry: e0,
                head: Some(v0)
            },
            CommitResult::Applied {
                entry: e1,
                seq: Seq::new(2),
                version: v2
            },
            CommitResult::Conflict {
                entry: e0,
                head: Some(v0)
            },
            CommitResult::Applied {
                entry: e0,
                seq: Seq::new(3),
                version: v3
            },
        ]
    );
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::new(3));

    // A commit whose only entry conflicts takes no seq; the next one gets 4.
    let results = store
        .commit(
            f.vault,
            f.device,
            vec![commit_entry(e1, Some(v0), v1, vec![])],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![CommitResult::Conflict {
            entry: e1,
            head: Some(v2)
        }]
    );
    // A conflict on an entry that has no head reports `None`.
    let results = store
        .commit(
            f.vault,
            f.device,
            vec![commit_entry(entry("cas", 7), Some(v0), v1, vec![])],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![CommitResult::Conflict {
            entry: entry("cas", 7),
            head: None
        }]
    );
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::new(3));
    assert_eq!(
        commit_one(&store, &f, commit_entry(e1, Some(v2), v1, vec![])).await,
        Seq::new(4)
    );
    // An empty commit does nothing.
    assert_eq!(
        store.commit(f.vault, f.device, vec![], NOW).await.unwrap(),
        vec![]
    );
    assert_log_consistent(&store, f.vault).await;
}

pub(crate) async fn seqs_stay_gap_free_across_conflicts(store: Store) {
    let f = fixture(&store, "gapfree").await;
    let mut heads: Vec<Option<VersionId>> = vec![None; 5];
    let mut next_version = 0u64;
    let mut applied = 0u64;
    // Deterministic mix of good and stale parents over 5 entries, 3 entries per commit.
    for round in 0..40u64 {
        let mut batch = Vec::new();
        let mut expect_applied = Vec::new();
        for k in 0..3u64 {
            let i = usize::try_from((round * 3 + k) % 5).unwrap();
            let stale = (round + k) % 4 == 0;
            let parent = if stale {
                Some(version("gapfree", 1_000_000 + round))
            } else {
                heads[i]
            };
            next_version += 1;
            let v = version("gapfree", next_version);
            // The 3 entries of a round are distinct (consecutive residues mod 5).
            batch.push(commit_entry(entry("gapfree", i as u64), parent, v, vec![]));
            if !stale {
                heads[i] = Some(v);
            }
            expect_applied.push(!stale);
        }
        let results = store.commit(f.vault, f.device, batch, NOW).await.unwrap();
        for (r, want) in results.iter().zip(&expect_applied) {
            match r {
                CommitResult::Applied { seq, .. } => {
                    assert!(want, "round {round}: unexpected {r:?}");
                    applied += 1;
                    assert_eq!(seq.get(), applied);
                }
                CommitResult::Conflict { .. } => assert!(!want, "round {round}: {r:?}"),
            }
        }
    }
    assert!(
        applied > 40,
        "the mix should apply most entries, got {applied}"
    );
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::new(applied));
    let log = assert_log_consistent(&store, f.vault).await;
    assert_eq!(log.len() as u64, applied);
}

pub(crate) async fn concurrent_commits_keep_log_and_chains(store: Store) {
    const TASKS: u64 = 8;
    const OWN: u64 = 12;
    const SHARED: u64 = 4;
    let f = Arc::new(fixture(&store, "concurrent").await);
    let shared = entry("concurrent", 1_000);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        let f = Arc::clone(&f);
        tasks.spawn(async move {
            let own = entry("concurrent", t);
            let mut parent = None;
            let mut conflicts = 0u32;
            for k in 0..OWN + SHARED {
                let v = version(&format!("concurrent {t}"), k);
                if k % 4 == 3 {
                    // Contend on the shared entry: retry on conflict with the head it reports.
                    let mut head = store
                        .entry_head(f.vault, shared)
                        .await
                        .unwrap()
                        .map(|h| h.version);
                    loop {
                        let r = store
                            .commit(
                                f.vault,
                                f.device,
                                vec![commit_entry(shared, head, v, vec![])],
                                NOW,
                            )
                            .await
                            .unwrap();
                        match &r[0] {
                            CommitResult::Applied { .. } => break,
                            CommitResult::Conflict { head: h, .. } => {
                                conflicts += 1;
                                head = *h;
                            }
                        }
                    }
                } else {
                    let r = store
                        .commit(
                            f.vault,
                            f.device,
                            vec![commit_entry(own, parent, v, vec![])],
                            NOW,
                        )
                        .await
                        .unwrap();
                    applied_seq(&r[0]);
                    parent = Some(v);
                }
            }
            conflicts
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let total = TASKS * (OWN + SHARED);
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::new(total));
    let log = assert_log_consistent(&store, f.vault).await;
    assert_eq!(log.len() as u64, total);
    let shared_versions = log.iter().filter(|c| c.entry == shared).count() as u64;
    assert_eq!(shared_versions, TASKS * SHARED);
}

pub(crate) async fn missing_chunks_apply_nothing(store: Store) {
    let f = fixture(&store, "missing").await;
    let (known, unknown, unknown2) = (
        chunk("missing", 0),
        chunk("missing", 1),
        chunk("missing", 2),
    );
    store
        .record_chunk(f.vault, known, 10, [0; 32], NOW)
        .await
        .unwrap();
    let e0 = entry("missing", 0);
    commit_one(
        &store,
        &f,
        commit_entry(e0, None, version("missing", 0), vec![]),
    )
    .await;

    let e = store
        .commit(
            f.vault,
            f.device,
            vec![
                commit_entry(
                    e0,
                    Some(version("missing", 0)),
                    version("missing", 1),
                    vec![known],
                ),
                commit_entry(
                    entry("missing", 1),
                    None,
                    version("missing", 2),
                    vec![unknown2, known, unknown, unknown2],
                ),
            ],
            NOW,
        )
        .await
        .unwrap_err();
    match &e {
        StoreError::MissingChunks { vault, chunks } => {
            assert_eq!(*vault, f.vault);
            assert_eq!(chunks, &vec![unknown2, unknown]);
        }
        other => panic!("expected MissingChunks, got {other:?}"),
    }
    assert_eq!(e.to_error_code(), ErrorCode::NotFound);
    assert!(!e.is_retryable());
    // Nothing applied: head, entry heads and chunk states are as before.
    assert_eq!(store.head(f.vault).await.unwrap(), Seq::new(1));
    assert_eq!(
        store
            .entry_head(f.vault, e0)
            .await
            .unwrap()
            .map(|h| h.version),
        Some(version("missing", 0))
    );
    assert_eq!(
        store
            .entry_head(f.vault, entry("missing", 1))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        store.chunk(f.vault, known).await.unwrap().unwrap().state,
        ChunkState::Pending { .. }
    ));
    assert_eq!(pull_all(&store, f.vault, 0).await.len(), 1);
    assert!(
        store
            .history(f.vault, entry("missing", 1), 0, None)
            .await
            .unwrap()
            .versions
            .is_empty()
    );
}

pub(crate) async fn pull_pages(store: Store) {
    let f = fixture(&store, "pull").await;
    let c = chunk("pull", 0);
    store
        .record_chunk(f.vault, c, 10, [0; 32], NOW)
        .await
        .unwrap();
    let mut parents: HashMap<EntryKey, VersionId> = HashMap::new();
    for n in 0..25u64 {
        let e = entry("pull", n % 3);
        let v = version("pull", n);
        let chunks = if n % 2 == 0 { vec![c] } else { vec![] };
        let ce = CommitEntry {
            epoch: Epoch::new(u32::try_from(n % 2).unwrap()),
            ..commit_entry(e, parents.get(&e).copied(), v, chunks)
        };
        store
            .commit(f.vault, f.device, vec![ce], NOW + n)
            .await
            .unwrap();
        parents.insert(e, v);
    }

    let page = store.pull(f.vault, Seq::ZERO, 10).await.unwrap();
    assert_eq!(page.changes.len(), 10);
    assert_eq!((page.next, page.more), (Seq::new(10), true));
    let first = &page.changes[0];
    assert_eq!(first.seq, Seq::new(1));
    assert_eq!(first.entry, entry("pull", 0));
    assert_eq!(first.version, version("pull", 0));
    assert_eq!(first.parent, None);
    assert_eq!(first.record, version("pull", 0).as_bytes().repeat(3));
    assert_eq!(first.chunks, vec![c]);
    assert_eq!(first.epoch, Epoch::ZERO);
    assert_eq!(first.device, f.device);
    assert_eq!(page.changes[3].parent, Some(version("pull", 0)));

    let page = store.pull(f.vault, Seq::new(10), 10).await.unwrap();
    assert_eq!(page.changes.first().map(|c| c.seq), Some(Seq::new(11)));
    assert_eq!((page.next, page.more), (Seq::new(20), true));
    let page = store.pull(f.vault, Seq::new(20), 10).await.unwrap();
    assert_eq!(page.changes.len(), 5);
    assert_eq!((page.next, page.more), (Seq::new(25), false));
    // At the head, and past it: empty, cursor kept.
    for since in [25, 30] {
        let page = store.pull(f.vault, Seq::new(since), 10).await.unwrap();
        assert!(page.changes.is_empty());
        assert_eq!((page.next, page.more), (Seq::new(since), false));
    }
    let page = store.pull(f.vault, Seq::new(u64::MAX), 10).await.unwrap();
    assert!(page.changes.is_empty() && !page.more);
    // 0 means the default page, which is capped.
    let page = store.pull(f.vault, Seq::ZERO, 0).await.unwrap();
    assert_eq!((page.changes.len(), page.more), (25, false));
    const { assert!(MAX_PULL_PAGE >= 25) };
    let page = store.pull(f.vault, Seq::ZERO, u32::MAX).await.unwrap();
    assert_eq!(page.changes.len(), 25);
    assert_log_consistent(&store, f.vault).await;
}

pub(crate) async fn history_pages(store: Store) {
    let f = fixture(&store, "history").await;
    let (e, other) = (entry("history", 0), entry("history", 1));
    let mut parent = None;
    let mut seqs = Vec::new();
    for n in 0..5u64 {
        let v = version("history", n);
        seqs.push(commit_one(&store, &f, commit_entry(e, parent, v, vec![])).await);
        parent = Some(v);
        // Interleave another entry.
        commit_one(
            &store,
            &f,
            commit_entry(
                other,
                (n > 0).then(|| version("history-other", n - 1)),
                version("history-other", n),
                vec![],
            ),
        )
        .await;
    }

    let page = store.history(f.vault, e, 2, None).await.unwrap();
    let got: Vec<(Seq, VersionId)> = page.versions.iter().map(|c| (c.seq, c.version)).collect();
    assert_eq!(
        got,
        vec![
            (seqs[4], version("history", 4)),
            (seqs[3], version("history", 3))
        ]
    );
    assert_eq!(page.next, Some(seqs[3]));
    let page = store.history(f.vault, e, 2, page.next).await.unwrap();
    assert_eq!(page.versions.len(), 2);
    assert_eq!(page.versions[0].version, version("history", 2));
    assert_eq!(page.next, Some(seqs[1]));
    let page = store.history(f.vault, e, 2, page.next).await.unwrap();
    assert_eq!(page.versions.len(), 1);
    assert_eq!(page.versions[0].version, version("history", 0));
    assert_eq!(page.versions[0].parent, None);
    assert_eq!(page.next, None);
    // Exactly a full last page: no next.
    let page = store.history(f.vault, e, 5, None).await.unwrap();
    assert_eq!((page.versions.len(), page.next), (5, None));
    assert!(page.versions.iter().all(|c| c.entry == e));
    let page = store.history(f.vault, e, 0, None).await.unwrap();
    assert_eq!(page.versions.len(), 5);
    const { assert!(MAX_HISTORY_PAGE >= 5) };
    for before in [Seq::ZERO, seqs[0]] {
        let page = store.history(f.vault, e, 0, Some(before)).await.unwrap();
        assert!(page.versions.is_empty() && page.next.is_none());
    }
    let page = store
        .history(f.vault, entry("history", 9), 10, None)
        .await
        .unwrap();
    assert!(page.versions.is_empty() && page.next.is_none());
}

pub(crate) async fn envelopes(store: Store) {
    let f = fixture(&store, "envelopes").await;
    let (me, other, sender2) = (
        f.device,
        registration("envelopes", 7).device,
        registration("envelopes", 8).device,
    );
    store
        .put_envelope(f.vault, Epoch::new(2), me, me, vec![2; 80])
        .await
        .unwrap();
    store
        .put_envelope(f.vault, Epoch::new(1), me, me, vec![1; 80])
        .await
        .unwrap();
    store
        .put_envelope(f.vault, Epoch::new(1), me, sender2, vec![3; 80])
        .await
        .unwrap();
    store
        .put_envelope(f.vault, Epoch::new(5), other, me, vec![5; 80])
        .await
        .unwrap();
    // The same sender replaces its envelope.
    store
        .put_envelope(f.vault, Epoch::new(2), me, me, vec![4; 80])
        .await
        .unwrap();

    let mine = store.envelopes_for(f.vault, me).await.unwrap();
    let got: Vec<(Epoch, DeviceId, u8)> = mine
        .iter()
        .map(|e| (e.epoch, e.sender, e.envelope[0]))
        .collect();
    let mut want_epoch1 = vec![(Epoch::new(1), me, 1), (Epoch::new(1), sender2, 3)];
    want_epoch1.sort_by_key(|(_, s, _)| *s);
    let mut want = want_epoch1;
    want.push((Epoch::new(2), me, 4));
    assert_eq!(got, want);
    assert!(
        mine.iter()
            .all(|e| e.recipient == me && e.envelope.len() == 80)
    );
    let theirs = store.envelopes_for(f.vault, other).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(store.envelopes_for(f.vault, sender2).await.unwrap(), vec![]);
    // The newest epoch seen in envelopes shows in the vault.
    assert_eq!(
        store.vault(f.vault).await.unwrap().unwrap().latest_epoch,
        Epoch::new(5)
    );
    let e = store
        .put_envelope(f.vault, Epoch::new(1), me, me, vec![0; 5000])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput { .. }), "{e}");
}

pub(crate) async fn epochs_rosters_and_rotation_marks(store: Store) {
    let f = fixture(&store, "epochs").await;
    let second = vault_id("epochs", 1);
    store.create_vault(f.account, second, NOW).await.unwrap();
    let token = store
        .create_enrolment_token(f.account, NOW + 60, true)
        .await
        .unwrap();
    let other = store
        .redeem_enrolment(token.expose(), registration("epochs", 1), NOW)
        .await
        .unwrap()
        .device;
    let latest = |v| {
        let store = Arc::clone(&store);
        async move { store.vault(v).await.unwrap().unwrap().latest_epoch.get() }
    };
    store
        .put_envelope(f.vault, Epoch::new(0), f.device, f.device, vec![0; 80])
        .await
        .unwrap();
    assert!(store.rotations_due(f.account).await.unwrap().is_empty());

    // A roster never counts as an epoch.
    store
        .put_envelope(f.vault, ROSTER_EPOCH, other, f.device, vec![9; 80])
        .await
        .unwrap();
    assert_eq!(latest(f.vault).await, 0);
    let roster = store.envelopes_for(f.vault, other).await.unwrap();
    assert_eq!(roster.len(), 1);
    assert_eq!(roster[0].epoch, ROSTER_EPOCH);
    let e = store
        .start_epoch(f.vault, ROSTER_EPOCH, f.device, vec![1; 80])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::EpochTaken { .. }), "{e}");

    // Revoking a device marks every vault of the account, once.
    store.revoke_device(other, NOW + 10).await.unwrap();
    let mut due = store.rotations_due(f.account).await.unwrap();
    due.sort_unstable();
    let mut want = vec![f.vault, second];
    want.sort_unstable();
    assert_eq!(due, want);
    store.revoke_device(other, NOW + 20).await.unwrap();
    assert_eq!(store.rotations_due(f.account).await.unwrap().len(), 2);

    // Only the next epoch can be started; the first device to start it wins.
    for wrong in [0, 2, 7] {
        let e = store
            .start_epoch(f.vault, Epoch::new(wrong), f.device, vec![1; 80])
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::EpochTaken { epoch, newest: 0, .. } if epoch == wrong),
            "{e}"
        );
        assert_eq!(e.to_error_code(), ErrorCode::Conflict { head: None });
    }
    // A roster stored now ends no rotation.
    store
        .put_envelope(f.vault, ROSTER_EPOCH, f.device, f.device, vec![9; 80])
        .await
        .unwrap();
    assert_eq!(store.rotations_due(f.account).await.unwrap().len(), 2);
    store
        .start_epoch(f.vault, Epoch::new(1), f.device, vec![1; 80])
        .await
        .unwrap();
    assert_eq!(latest(f.vault).await, 1);
    let e = store
        .start_epoch(f.vault, Epoch::new(1), f.device, vec![2; 80])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::EpochTaken { newest: 1, .. }), "{e}");
    assert_eq!(store.rotations_due(f.account).await.unwrap(), vec![second]);
    // A plain envelope of a newer epoch ends a rotation too.
    store
        .put_envelope(second, Epoch::new(1), f.device, f.device, vec![1; 80])
        .await
        .unwrap();
    assert!(store.rotations_due(f.account).await.unwrap().is_empty());

    // Racing starts of one epoch: exactly one wins.
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let store = Arc::clone(&store);
            let (vault, device) = (f.vault, f.device);
            tokio::spawn(async move {
                store
                    .start_epoch(vault, Epoch::new(2), device, vec![i; 80])
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::EpochTaken { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(latest(f.vault).await, 2);
}

pub(crate) async fn unknown_vault_is_not_found(store: Store) {
    let f = fixture(&store, "unknown-vault").await;
    let v = vault_id("unknown-vault", 404);
    let c = chunk("unknown-vault", 0);
    let nf = |r: Result<(), StoreError>| match r {
        Err(e @ StoreError::NotFound { .. }) => assert_eq!(e.to_error_code(), ErrorCode::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    };
    nf(store.head(v).await.map(drop));
    nf(store.missing_chunks(v, &[c]).await.map(drop));
    nf(store.record_chunk(v, c, 1, [0; 32], NOW).await.map(drop));
    nf(store.chunk(v, c).await.map(drop));
    nf(store
        .commit(
            v,
            f.device,
            vec![commit_entry(entry("x", 0), None, version("x", 0), vec![])],
            NOW,
        )
        .await
        .map(drop));
    nf(store.commit(v, f.device, vec![], NOW).await.map(drop));
    nf(store.pull(v, Seq::ZERO, 0).await.map(drop));
    nf(store.history(v, entry("x", 0), 0, None).await.map(drop));
    nf(store.entry_head(v, entry("x", 0)).await.map(drop));
    nf(store
        .put_envelope(v, Epoch::ZERO, f.device, f.device, vec![1])
        .await);
    nf(store.envelopes_for(v, f.device).await.map(drop));
    assert_eq!(store.vault(v).await.unwrap(), None);
}

pub(crate) async fn account_usage_counts(store: Store) {
    let f = fixture(&store, "usage").await;
    let usage = store.account_usage(f.account).await.unwrap();
    assert_eq!(
        (usage.stored_bytes, usage.devices, usage.vaults),
        (0, 1, 1),
        "a fresh account with one device and one vault"
    );

    // New chunks count their sealed length; the same bytes again cost nothing.
    let (c0, c1) = (chunk("usage", 0), chunk("usage", 1));
    store
        .record_chunk(f.vault, c0, 100, [1; 32], NOW)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c1, 40, [2; 32], NOW)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c0, 100, [1; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        140
    );

    // A pending chunk re-sealed with other bytes counts its new length instead of the old.
    store
        .record_chunk(f.vault, c1, 50, [3; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        150
    );

    // A committed chunk never changes, nor does its cost.
    commit_one(
        &store,
        &f,
        commit_entry(entry("usage", 0), None, version("usage", 0), vec![c0]),
    )
    .await;
    store
        .record_chunk(f.vault, c0, 999, [9; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        150
    );

    // A second vault of the account adds to it; the same chunk id in another vault is another
    // chunk.
    let second = vault_id("usage", 1);
    store.create_vault(f.account, second, NOW).await.unwrap();
    store.create_vault(f.account, second, NOW).await.unwrap();
    store
        .record_chunk(second, c0, 10, [4; 32], NOW)
        .await
        .unwrap();
    let usage = store.account_usage(f.account).await.unwrap();
    assert_eq!((usage.stored_bytes, usage.vaults), (160, 2));

    // Devices: enrolled and not revoked.
    let token = store
        .create_enrolment_token(f.account, NOW + 3600, true)
        .await
        .unwrap();
    for n in 1..=2 {
        store
            .redeem_enrolment(token.expose(), registration("usage", n), NOW)
            .await
            .unwrap();
    }
    assert_eq!(store.account_usage(f.account).await.unwrap().devices, 3);
    store
        .revoke_device(registration("usage", 1).device, NOW)
        .await
        .unwrap();
    assert_eq!(store.account_usage(f.account).await.unwrap().devices, 2);

    // An enrolment token tells its account without being used up.
    assert_eq!(
        store.enrolment_token_account(token.expose()).await.unwrap(),
        Some((f.tenant, f.account))
    );
    assert_eq!(
        store
            .enrolment_token_account("dooz-not-a-token")
            .await
            .unwrap(),
        None
    );

    // Another account's usage is its own.
    let other = fixture(&store, "usage other").await;
    store
        .record_chunk(other.vault, c0, 7, [5; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store
            .account_usage(other.account)
            .await
            .unwrap()
            .stored_bytes,
        7
    );
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        160
    );

    // Concurrent uploads of distinct chunks all count.
    let mut tasks = Vec::new();
    for n in 10..42 {
        let store = Arc::clone(&store);
        let vault = other.vault;
        tasks.push(tokio::spawn(async move {
            store
                .record_chunk(vault, chunk("usage", n), 1000, [6; 32], NOW)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store
            .account_usage(other.account)
            .await
            .unwrap()
            .stored_bytes,
        7 + 32 * 1000
    );

    match store.account_usage(AccountId::new(u64::MAX)).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("expected NotFound for an unknown account, got {other:?}"),
    }
}

pub(crate) async fn forget_lost_pending_chunks(store: Store) {
    let f = fixture(&store, "forget").await;
    let [c0, c1] = [0, 1].map(|n| chunk("forget", n));
    store
        .record_chunk(f.vault, c0, 100, [1; 32], NOW)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c1, 40, [2; 32], NOW)
        .await
        .unwrap();
    // Batch lookup, in order, unknown ones as None.
    let c2 = chunk("forget", 2);
    let found = store.chunks(f.vault, &[c1, c2, c0]).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|r| r.as_ref().map(|r| r.chunk))
            .collect::<Vec<_>>(),
        vec![Some(c1), None, Some(c0)]
    );
    // A pending chunk is forgotten: `Have` asks for it again and the usage drops.
    assert!(store.forget_chunk(f.vault, c0, NOW).await.unwrap());
    assert_eq!(
        store.missing_chunks(f.vault, &[c0, c1]).await.unwrap(),
        vec![c0]
    );
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        40
    );
    // Unknown and committed chunks are left alone.
    assert!(!store.forget_chunk(f.vault, c0, NOW).await.unwrap());
    let v = version("forget", 0);
    store
        .commit(
            f.vault,
            f.device,
            vec![commit_entry(entry("forget", 0), None, v, vec![c1])],
            NOW,
        )
        .await
        .unwrap();
    assert!(!store.forget_chunk(f.vault, c1, NOW).await.unwrap());
    assert_eq!(store.missing_chunks(f.vault, &[c1]).await.unwrap(), vec![]);
}

pub(crate) async fn packed_chunks_are_located_and_counted(store: Store) {
    let f = fixture(&store, "packed").await;
    let [c0, c1, c2, c3] = [0, 1, 2, 3].map(|n| chunk("packed", n));
    // c2 is committed as a blob of its own, c3 pending as a blob with other bytes.
    store
        .record_chunk(f.vault, c2, 70, [2; 32], NOW)
        .await
        .unwrap();
    let v = version("packed", 0);
    store
        .commit(
            f.vault,
            f.device,
            vec![commit_entry(entry("packed", 0), None, v, vec![c2])],
            NOW,
        )
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c3, 500, [9; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        570
    );

    let pack = PackId::from_bytes([7; 16]);
    let packed = |chunk, offset, sealed_len, b| PackedChunk {
        chunk,
        offset,
        sealed_len,
        blake3: [b; 32],
    };
    store
        .record_packed_chunks(
            f.vault,
            pack,
            1000,
            vec![
                packed(c0, 0, 100, 0),
                packed(c1, 100, 40, 1),
                packed(c2, 140, 70, 2),
                packed(c3, 210, 50, 3),
            ],
            NOW,
        )
        .await
        .unwrap();
    let records = store.chunks(f.vault, &[c0, c1, c2, c3]).await.unwrap();
    let loc = |i: usize| records[i].as_ref().map(|r| (r.location, r.sealed_len));
    assert_eq!(
        loc(0),
        Some((ChunkLocation::Packed { pack, offset: 0 }, 100))
    );
    assert_eq!(
        loc(1),
        Some((ChunkLocation::Packed { pack, offset: 100 }, 40))
    );
    // A committed chunk keeps its blob; a pending one takes the packed bytes.
    assert_eq!(loc(2), Some((ChunkLocation::Blob, 70)));
    assert_eq!(
        loc(3),
        Some((ChunkLocation::Packed { pack, offset: 210 }, 50))
    );
    assert_eq!(
        store.chunk(f.vault, c1).await.unwrap().map(|r| r.location),
        Some(ChunkLocation::Packed { pack, offset: 100 })
    );
    // Usage: c2 70 + c0 100 + c1 40 + c3 50 (was 500).
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        260
    );
    assert!(
        store
            .missing_chunks(f.vault, &[c0, c1, c3])
            .await
            .unwrap()
            .is_empty()
    );

    // Uploaded again as a blob, a pending packed chunk moves to the blob.
    store
        .record_chunk(f.vault, c1, 44, [4; 32], NOW)
        .await
        .unwrap();
    assert_eq!(
        store.chunk(f.vault, c1).await.unwrap().map(|r| r.location),
        Some(ChunkLocation::Blob)
    );
    // A forgotten packed chunk loses its location too.
    assert!(store.forget_chunk(f.vault, c0, NOW).await.unwrap());
    assert_eq!(store.chunk(f.vault, c0).await.unwrap(), None);
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        70 + 44 + 50
    );
}

pub(crate) async fn collect_only_chunks_still_pending(store: Store) {
    let f = fixture(&store, "collect").await;
    let [c0, c1, c2] = [0, 1, 2].map(|n| chunk("collect", n));
    store
        .record_chunk(f.vault, c0, 10, [0; 32], NOW)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c1, 20, [1; 32], NOW + 1)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c2, 30, [2; 32], NOW + 100)
        .await
        .unwrap();
    let old = store
        .pending_chunks_before(f.vault, NOW + 50)
        .await
        .unwrap();
    let mut ids: Vec<_> = old.iter().map(|r| r.chunk).collect();
    ids.sort();
    let mut want = vec![c0, c1];
    want.sort();
    assert_eq!(ids, want);

    // c1 is committed after the scan: the collection keeps it.
    store
        .commit(
            f.vault,
            f.device,
            vec![commit_entry(
                entry("collect", 0),
                None,
                version("collect", 0),
                vec![c1],
            )],
            NOW + 60,
        )
        .await
        .unwrap();
    assert!(
        store
            .collect_pending_chunk(f.vault, c0, NOW, NOW + 2)
            .await
            .unwrap()
    );
    assert!(
        !store
            .collect_pending_chunk(f.vault, c1, NOW + 1, NOW + 2)
            .await
            .unwrap()
    );
    // A `since` that does not match (uploaded again meanwhile) keeps the chunk.
    assert!(
        !store
            .collect_pending_chunk(f.vault, c2, NOW, NOW + 2)
            .await
            .unwrap()
    );
    assert_eq!(
        store.missing_chunks(f.vault, &[c0, c1, c2]).await.unwrap(),
        vec![c0]
    );
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        50
    );
    assert!(
        store
            .all_vaults()
            .await
            .unwrap()
            .iter()
            .any(|v| v.vault == f.vault)
    );

    // Packs: live counts follow the chunk records.
    let pack = PackId::from_bytes([9; 16]);
    let c3 = chunk("collect", 3);
    store
        .record_packed_chunks(
            f.vault,
            pack,
            99,
            vec![PackedChunk {
                chunk: c3,
                offset: 5,
                sealed_len: 40,
                blake3: [3; 32],
            }],
            NOW,
        )
        .await
        .unwrap();
    let packs = store.packs(f.vault).await.unwrap();
    assert_eq!(packs.len(), 1);
    assert_eq!(
        (
            packs[0].pack,
            packs[0].len,
            packs[0].live_chunks,
            packs[0].live_bytes
        ),
        (pack, 99, 1, 40)
    );
    assert!(
        store
            .collect_pending_chunk(f.vault, c3, NOW, NOW + 2)
            .await
            .unwrap()
    );
    assert_eq!(store.packs(f.vault).await.unwrap()[0].live_chunks, 0);
    assert!(store.delete_pack(f.vault, pack).await.unwrap());
    assert!(store.packs(f.vault).await.unwrap().is_empty());
    assert!(!store.delete_pack(f.vault, pack).await.unwrap());
}

pub(crate) async fn retention_forgets_old_versions_and_releases_their_chunks(store: Store) {
    let f = fixture(&store, "retain").await;
    let [c0, c1, c2, c3] = [0, 1, 2, 3].map(|n| chunk("retain", n));
    for c in [c0, c1, c2, c3] {
        store
            .record_chunk(f.vault, c, 10, [1; 32], NOW)
            .await
            .unwrap();
    }
    let (e0, e1) = (entry("retain", 0), entry("retain", 1));
    let [v0, v1, v2, v3] = [0, 1, 2, 3].map(|n| version("retain", n));
    // e0: v0 [c0, c1] → v1 [c2] → v2 [c1]; e1: v3 [c3].
    commit_one(&store, &f, commit_entry(e0, None, v0, vec![c0, c1])).await;
    commit_one(&store, &f, commit_entry(e0, Some(v0), v1, vec![c2])).await;
    commit_one(&store, &f, commit_entry(e0, Some(v1), v2, vec![c1])).await;
    commit_one(&store, &f, commit_entry(e1, None, v3, vec![c3])).await;
    let all: std::collections::HashSet<ChunkId> = [c0, c1, c2, c3].into();
    assert_eq!(store.retained_chunks(f.vault).await.unwrap(), all);

    // Nothing superseded before NOW: nothing forgotten.
    assert_eq!(store.expire_versions(f.vault, NOW).await.unwrap(), 0);
    // Everything superseded by NOW + 1: v0 and v1 go; heads stay.
    assert_eq!(store.expire_versions(f.vault, NOW + 1).await.unwrap(), 2);
    assert_eq!(store.expire_versions(f.vault, NOW + 1).await.unwrap(), 0);
    let history = store.history(f.vault, e0, 0, None).await.unwrap();
    assert_eq!(
        history
            .versions
            .iter()
            .map(|c| c.version)
            .collect::<Vec<_>>(),
        vec![v2]
    );
    assert_eq!(
        store
            .pull(f.vault, Seq::ZERO, 0)
            .await
            .unwrap()
            .changes
            .len(),
        4
    );
    let keep = store.retained_chunks(f.vault).await.unwrap();
    assert_eq!(keep, [c1, c3].into());

    // Release: c0 and c2 become pending since the given time; kept chunks stay committed.
    assert_eq!(
        store
            .release_chunks(f.vault, keep.clone(), NOW + 7)
            .await
            .unwrap(),
        2
    );
    for c in [c0, c2] {
        let state = store.chunk(f.vault, c).await.unwrap().unwrap().state;
        assert_eq!(state, ChunkState::Pending { since: NOW + 7 });
    }
    assert!(matches!(
        store.chunk(f.vault, c1).await.unwrap().unwrap().state,
        ChunkState::Committed { .. }
    ));
    assert_eq!(
        store.release_chunks(f.vault, keep, NOW + 8).await.unwrap(),
        0
    );
    // Keep compares the pending time: only the exact one makes it committed again.
    assert!(
        !store
            .keep_chunk(f.vault, c0, NOW + 6, NOW + 9)
            .await
            .unwrap()
    );
    assert!(
        store
            .keep_chunk(f.vault, c0, NOW + 7, NOW + 9)
            .await
            .unwrap()
    );
    assert_eq!(
        store.chunk(f.vault, c0).await.unwrap().unwrap().state,
        ChunkState::Committed { at: NOW + 9 }
    );
    assert!(
        !store
            .keep_chunk(f.vault, c0, NOW + 7, NOW + 9)
            .await
            .unwrap()
    );
    // A commit that names a released chunk makes it committed again.
    commit_one(
        &store,
        &f,
        commit_entry(e1, Some(v3), version("retain", 4), vec![c2]),
    )
    .await;
    assert!(matches!(
        store.chunk(f.vault, c2).await.unwrap().unwrap().state,
        ChunkState::Committed { .. }
    ));
}

pub(crate) async fn repacked_chunks_move_only_from_where_they_are(store: Store) {
    let f = fixture(&store, "repack").await;
    let [c0, c1, c2] = [0, 1, 2].map(|n| chunk("repack", n));
    let (old, new) = (PackId::from_bytes([1; 16]), PackId::from_bytes([2; 16]));
    let packed = |chunk, offset| PackedChunk {
        chunk,
        offset,
        sealed_len: 10,
        blake3: [4; 32],
    };
    store
        .record_packed_chunks(
            f.vault,
            old,
            100,
            vec![packed(c0, 5), packed(c1, 15), packed(c2, 25)],
            NOW,
        )
        .await
        .unwrap();
    // c2 is asked to move from an offset it is not at: it stays.
    let moved = store
        .relocate_packed_chunks(
            f.vault,
            old,
            new,
            40,
            vec![(c0, 5, 5), (c1, 15, 15), (c2, 99, 25)],
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(moved, 2);
    let at = |c| {
        let store = Arc::clone(&store);
        let v = f.vault;
        async move { store.chunk(v, c).await.unwrap().unwrap().location }
    };
    assert_eq!(
        at(c0).await,
        ChunkLocation::Packed {
            pack: new,
            offset: 5
        }
    );
    assert_eq!(
        at(c1).await,
        ChunkLocation::Packed {
            pack: new,
            offset: 15
        }
    );
    assert_eq!(
        at(c2).await,
        ChunkLocation::Packed {
            pack: old,
            offset: 25
        }
    );
    let packs = store.packs(f.vault).await.unwrap();
    let live = |p| packs.iter().find(|i| i.pack == p).map(|i| i.live_chunks);
    assert_eq!((live(old), live(new)), (Some(1), Some(2)));
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        30,
        "moving chunks changes no stored bytes"
    );
}

pub(crate) async fn delete_account_removes_everything_of_it(store: Store) {
    let f = fixture(&store, "doomed").await;
    let keep = fixture(&store, "kept").await;
    let (c0, c1) = (chunk("doomed", 0), chunk("kept", 0));
    for (g, c) in [(&f, c0), (&keep, c1)] {
        store
            .record_chunk(g.vault, c, 10, [1; 32], NOW)
            .await
            .unwrap();
        let e = commit_entry(entry("x", 0), None, version("x", 0), vec![c]);
        commit_one(&store, g, e).await;
        store
            .put_envelope(g.vault, Epoch::new(1), g.device, g.device, vec![1])
            .await
            .unwrap();
    }
    let spare = store
        .create_enrolment_token(f.account, NOW + 3600, true)
        .await
        .unwrap();
    let second = vault_id("doomed", 1);
    store.create_vault(f.account, second, NOW).await.unwrap();
    store
        .record_packed_chunks(
            f.vault,
            PackId::from_bytes([4; 16]),
            60,
            vec![PackedChunk {
                chunk: chunk("doomed", 1),
                offset: 5,
                sealed_len: 20,
                blake3: [4; 32],
            }],
            NOW,
        )
        .await
        .unwrap();

    let mut deleted = store.delete_account(f.account, NOW + 10).await.unwrap();
    deleted.sort();
    let mut want = vec![f.vault, second];
    want.sort();
    assert_eq!(deleted, want);
    assert_eq!(store.account(f.account).await.unwrap(), None);
    assert_eq!(store.vault(f.vault).await.unwrap(), None);
    assert_eq!(store.vault(second).await.unwrap(), None);
    assert!(store.packs(f.vault).await.unwrap().is_empty());
    assert_eq!(store.device(f.device).await.unwrap(), None);
    assert!(matches!(
        store.chunk(f.vault, c0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.enrolment_token_account(spare.expose()).await.unwrap(),
        None
    );
    assert!(matches!(
        store.account_usage(f.account).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.pull(f.vault, Seq::ZERO, 10).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_account(f.account, NOW + 10).await,
        Err(StoreError::NotFound { .. })
    ));
    // The name can be used again; the other account is untouched.
    store
        .create_account(f.tenant, "account doomed")
        .await
        .unwrap();
    assert!(store.chunk(keep.vault, c1).await.unwrap().is_some());
    assert_eq!(pull_all(&store, keep.vault, 10).await.len(), 1);
    assert_eq!(
        store
            .envelopes_for(keep.vault, keep.device)
            .await
            .unwrap()
            .len(),
        1
    );
    let usage = store.account_usage(keep.account).await.unwrap();
    assert_eq!(
        (usage.stored_bytes, usage.devices, usage.vaults),
        (10, 1, 1)
    );
}

pub(crate) async fn traffic_counters_add_up_per_key_and_hour(store: Store) {
    let f = fixture(&store, "traffic").await;
    let other = fixture(&store, "traffic other").await;
    let hour = NOW / HOUR_SECS;
    let key = |tenant, account, vault, device, hour| TrafficKey {
        tenant,
        hour,
        account,
        vault,
        device,
    };
    let counts = |i, e, r| TrafficCounts {
        ingress_bytes: i,
        egress_bytes: e,
        requests: r,
    };
    let k1 = key(f.tenant, f.account, Some(f.vault), Some(f.device), hour);
    let k2 = key(f.tenant, f.account, None, Some(f.device), hour);
    let k3 = key(f.tenant, f.account, Some(f.vault), Some(f.device), hour + 1);
    let k4 = key(other.tenant, other.account, None, None, hour);
    // A key twice in one batch, and again in a later batch; a zero row is left out.
    store
        .add_traffic(vec![
            (k1, counts(10, 100, 1)),
            (k2, counts(5, 6, 1)),
            (k1, counts(1, 2, 1)),
            (k4, counts(7, 7, 7)),
        ])
        .await
        .unwrap();
    store
        .add_traffic(vec![(k1, counts(4, 8, 1)), (k3, counts(1, 1, 1))])
        .await
        .unwrap();
    let mut rows = store.traffic(Some(f.tenant), hour..hour + 1).await.unwrap();
    rows.sort_by_key(|(k, _)| *k);
    let mut want = vec![(k1, counts(15, 110, 3)), (k2, counts(5, 6, 1))];
    want.sort_by_key(|(k, _)| *k);
    assert_eq!(rows, want);
    // Hours are a half-open range; tenants are apart.
    let rows = store.traffic(Some(f.tenant), hour..hour + 2).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.contains(&(k3, counts(1, 1, 1))));
    assert!(
        store
            .traffic(Some(f.tenant), hour + 2..hour + 9)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .traffic(Some(other.tenant), 0..u64::MAX)
            .await
            .unwrap(),
        vec![(k4, counts(7, 7, 7))]
    );
    // All tenants.
    let all = store.traffic(None, hour..hour + 2).await.unwrap();
    assert!(all.contains(&(k4, counts(7, 7, 7))) && all.contains(&(k3, counts(1, 1, 1))));
}

pub(crate) async fn storage_hours_integrate_the_gauge_exactly(store: Store) {
    let f = fixture(&store, "storage hours").await;
    let h = NOW / HOUR_SECS + 1;
    let t0 = h * HOUR_SECS + 600;
    let [c0, c1, c2] = [0, 1, 2].map(|n| chunk("storage hours", n));
    // 1000 bytes from 600 s into hour h, 500 more from 600 s into hour h+1.
    store
        .record_chunk(f.vault, c0, 1000, [1; 32], t0)
        .await
        .unwrap();
    store
        .record_chunk(f.vault, c1, 500, [2; 32], t0 + HOUR_SECS)
        .await
        .unwrap();
    let read = |now| {
        let store = Arc::clone(&store);
        async move {
            let mut rows = store
                .storage_hours(Some(f.tenant), h - 1..h + 3, now)
                .await
                .unwrap();
            rows.sort_by_key(|r| r.hour);
            rows.iter()
                .map(|r| (r.hour, r.max_bytes, r.byte_seconds))
                .collect::<Vec<_>>()
        }
    };
    let now = t0 + 2 * HOUR_SECS;
    assert_eq!(
        read(now).await,
        vec![
            (h, 1000, 1000 * 3000),
            (h + 1, 1500, 1000 * 600 + 1500 * 3000),
            (h + 2, 1500, 1500 * 600),
        ]
    );
    // Closed hours read the same later; the open one grows to its end.
    let later = read(t0 + 10 * HOUR_SECS).await;
    assert_eq!(later[..2], read(now).await[..2]);
    assert_eq!(later[2], (h + 2, 1500, 1500 * 3600));
    // A pending chunk collected in hour h+2: the gauge drops; the peak of h+2 stays.
    assert!(
        store
            .collect_pending_chunk(f.vault, c1, t0 + HOUR_SECS, t0 + 2 * HOUR_SECS + 1200)
            .await
            .unwrap()
    );
    let rows = read(t0 + 3 * HOUR_SECS).await;
    // t0 + 2 h + 1200 s is 1800 s into hour h+2.
    assert_eq!(rows[2], (h + 2, 1500, 1500 * 1800 + 1000 * 1800));
    let gauges = store.storage_gauges(Some(f.tenant)).await.unwrap();
    assert_eq!(gauges.len(), 1);
    assert_eq!(gauges[0].stored_bytes, 1000);
    assert_eq!(gauges[0].vault, f.vault);
    assert_eq!(gauges[0].account, f.account);
    // The gauge equals the account's stored bytes, which change in the same transactions.
    assert_eq!(
        store.account_usage(f.account).await.unwrap().stored_bytes,
        1000
    );
    // A packed chunk counts too; a pending chunk sealed again counts its new length only.
    store
        .record_packed_chunks(
            f.vault,
            PackId::from_bytes([9; 16]),
            64,
            vec![PackedChunk {
                chunk: c2,
                offset: 0,
                sealed_len: 40,
                blake3: [3; 32],
            }],
            t0 + 3 * HOUR_SECS,
        )
        .await
        .unwrap();
    let gauges = store.storage_gauges(Some(f.tenant)).await.unwrap();
    assert_eq!(gauges[0].stored_bytes, 1040);
    // Deleting the account ends its storage; its hours stay for reports.
    store
        .delete_account(f.account, t0 + 4 * HOUR_SECS)
        .await
        .unwrap();
    assert!(
        store
            .storage_gauges(Some(f.tenant))
            .await
            .unwrap()
            .is_empty()
    );
    let rows = read(t0 + 9 * HOUR_SECS).await;
    assert_eq!(rows[0], (h, 1000, 1000 * 3000));
    assert!(rows.iter().all(|r| r.0 < h + 3));
    // They still name the deleted account.
    let hours = store
        .storage_hours(Some(f.tenant), h..h + 3, t0 + 9 * HOUR_SECS)
        .await
        .unwrap();
    assert!(hours.iter().all(|r| r.account == f.account), "{hours:?}");
}

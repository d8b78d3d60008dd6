//! Keys end to end: pairing (honest and with a malicious server), on an in-process
//! `dooz-server` over loopback QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_client::{
    Connection, Engine, EngineOptions, Index, Invitation, Joining, PairingCode, PairingCodeError,
    PairingError, keyring_from_index,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, PairingSecret, VaultId, VaultKey, wrap_vault_key};
use dooz_protocol::{Extensions, PairingPost, Request, Response};
use dooz_server::service::{Server, ServerParts};
use dooz_server::tls::ServerIdentity;
use dooz_server::transport::TransportTuning;
use dooz_server::{AccountId, DeviceRegistration, MetaStore, SledStore};
use dooz_storage::LocalDir;
use tempfile::TempDir;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct TestServer {
    server: Server,
    account: AccountId,
    fingerprint: [u8; 32],
    _blob_dir: TempDir,
}

impl TestServer {
    async fn start() -> Self {
        let blob_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::temporary().unwrap());
        let tenant = store.create_tenant("test").await.unwrap();
        let account = store.create_account(tenant, "ana").await.unwrap();
        let identity = ServerIdentity::generate().unwrap();
        let fingerprint = *blake3::hash(identity.cert_der()).as_bytes();
        let parts = ServerParts {
            store,
            blobs: Arc::new(LocalDir::open(blob_dir.path()).unwrap()),
            identity,
            listen: "127.0.0.1:0".parse().unwrap(),
            tuning: TransportTuning::default(),
            limits: Default::default(),
            shutdown_grace: Duration::from_secs(1),
            policy: Arc::new(dooz_server::policy::Unlimited),
        };
        Self {
            server: Server::start(parts).unwrap(),
            account,
            fingerprint,
            _blob_dir: blob_dir,
        }
    }

    /// Enrols a new device (the server can do this on its own: the threat pairing defends
    /// against) and connects it.
    async fn device(&self, name: &str) -> Device {
        let keys = DeviceSecretKeys::generate().unwrap();
        let store = self.server.store();
        let token = store
            .create_enrolment_token(self.account, now() + 900, false)
            .await
            .unwrap();
        let public = keys.public();
        let registration = DeviceRegistration {
            device: pid(&keys),
            identity_key: public.identity,
            exchange_key: public.exchange,
            name: name.to_owned(),
        };
        store
            .redeem_enrolment(token.expose(), registration, now())
            .await
            .unwrap();
        let conn = Connection::connect(
            &self.server.local_addr().to_string(),
            &self.fingerprint,
            &keys,
        )
        .await
        .unwrap();
        let index_dir = tempfile::tempdir().unwrap();
        let index = Index::open(index_dir.path()).unwrap();
        Device {
            name: name.to_owned(),
            keys,
            conn,
            index,
            folder: tempfile::tempdir().unwrap(),
            _index_dir: index_dir,
        }
    }
}

fn pid(keys: &DeviceSecretKeys) -> dooz_protocol::DeviceId {
    dooz_protocol::DeviceId::from_bytes(*keys.device_id().as_bytes())
}

fn pvault(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

struct Device {
    name: String,
    keys: DeviceSecretKeys,
    conn: Connection,
    index: Index,
    folder: TempDir,
    _index_dir: TempDir,
}

impl Device {
    /// Creates a vault named `name` on the server with one epoch key and binds the folder.
    async fn create_vault(&self, name: &str) -> VaultId {
        let vault = VaultId::generate().unwrap();
        self.conn.create_vault(pvault(vault)).await.unwrap();
        self.index
            .put_vault_key(vault, Epoch(0), &VaultKey::generate().unwrap())
            .unwrap();
        self.index.set_vault_name(name, vault).unwrap();
        vault
    }

    fn engine(&self, vault: VaultId) -> Engine {
        let vi = match self.index.vault(vault) {
            Ok(vi) => vi,
            Err(_) => self.index.add_vault(vault, self.folder.path()).unwrap(),
        };
        let ring = keyring_from_index(&self.index, vault).unwrap();
        Engine::new(
            vi,
            ring,
            self.conn.clone(),
            &self.name,
            EngineOptions::default(),
        )
        .unwrap()
    }
}

/// A pairs B: A shows a code, B answers it, A hands the keys over.
async fn pair(a: &Device, b: &Device) -> Result<Vec<dooz_client::PairedVault>, PairingError> {
    let invitation = Invitation::open(&a.conn, &a.keys).await?;
    let code: PairingCode = invitation.code().encode().parse().unwrap();
    // A waits for B's post while B posts and waits for A's reply: both run at once.
    let (done, joined) = tokio::join!(invitation.complete(&a.conn, &a.keys, &a.index), async {
        let joining = Joining::post(&b.conn, &b.keys, code, &b.name).await?;
        joining.finish(&b.conn, &b.keys, &b.index).await
    });
    let done = done?;
    assert_eq!(done.device, b.keys.device_id());
    assert_eq!(done.name, b.name);
    joined
}

#[tokio::test]
async fn pairing_hands_over_every_vault_and_the_new_device_reads_the_files() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let photos = a.create_vault("photos").await;
    let notes = a.create_vault("notes").await;
    fs::write(a.folder.path().join("hello.txt"), b"hello from alpha").unwrap();
    fs::write(a.folder.path().join("big.bin"), vec![7u8; 300_000]).unwrap();
    a.engine(photos).sync().await.unwrap();

    let b = server.device("beta").await;
    let vaults = pair(&a, &b).await.unwrap();
    assert_eq!(vaults.len(), 2);
    assert_eq!(b.index.vault_by_name("photos").unwrap(), Some(photos));
    assert_eq!(b.index.vault_by_name("notes").unwrap(), Some(notes));
    for v in [photos, notes] {
        let a_keys = a.index.vault_keys(v).unwrap();
        let b_keys = b.index.vault_keys(v).unwrap();
        assert_eq!(a_keys.len(), b_keys.len());
        for ((ea, ka), (eb, kb)) in a_keys.iter().zip(&b_keys) {
            assert_eq!((ea, ka.expose_secret()), (eb, kb.expose_secret()));
        }
    }

    b.engine(photos).sync().await.unwrap();
    assert_eq!(
        fs::read(b.folder.path().join("hello.txt")).unwrap(),
        b"hello from alpha"
    );
    assert_eq!(
        fs::read(b.folder.path().join("big.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    server.server.shutdown().await;
}

#[tokio::test]
async fn a_key_the_server_slips_into_the_slot_is_refused_and_nothing_is_wrapped() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    // The server enrols a device of its own and, knowing the slot id from `PairingOpen`, posts
    // that device's keys to the slot. It does not know the secret, so its MAC is made up.
    let mallory = server.device("mallory").await;
    let invitation = Invitation::open(&a.conn, &a.keys).await.unwrap();
    let slot = invitation.code().slot();
    let forged = PairingSecret::generate()
        .unwrap()
        .seal_join(&mallory.keys.public(), "beta");
    let posted = mallory
        .conn
        .request_answer(Request::PairingPost(PairingPost {
            slot,
            payload: forged,
            ext: Extensions::default(),
        }))
        .await
        .unwrap();
    assert!(matches!(posted, Response::Ok(_)), "{posted:?}");

    let code_text = invitation.code().encode();
    let err = invitation
        .complete(&a.conn, &a.keys, &a.index)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PairingError::NotAuthentic(dooz_crypto::PairingError::JoinNotAuthentic)
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("no vault key was handed over"),
        "{err}"
    );
    let handed = server
        .server
        .store()
        .envelopes_for(pvault(vault), pid(&mallory.keys))
        .await
        .unwrap();
    assert!(
        handed.is_empty(),
        "a key was wrapped to the server's device"
    );

    // The real new device's code is spent: it hears "used", and gets no key either.
    let b = server.device("beta").await;
    let err = Joining::post(&b.conn, &b.keys, code_text.parse().unwrap(), "beta")
        .await
        .unwrap_err();
    assert!(matches!(err, PairingError::Used), "{err:?}");
    server.server.shutdown().await;
}

#[tokio::test]
async fn an_envelope_the_server_substitutes_is_refused_and_no_key_is_kept() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    let b = server.device("beta").await;
    let mallory = server.device("mallory").await;

    let invitation = Invitation::open(&a.conn, &a.keys).await.unwrap();
    let code: PairingCode = invitation.code().encode().parse().unwrap();
    let joining = Joining::post(&b.conn, &b.keys, code, "beta").await.unwrap();
    invitation
        .complete(&a.conn, &a.keys, &a.index)
        .await
        .unwrap();

    // The server swaps A's envelope for one its own device made, with a key it knows, and
    // files it under A's name.
    let server_key = VaultKey::generate().unwrap();
    let swapped = wrap_vault_key(
        &mallory.keys,
        &b.keys.public(),
        vault,
        Epoch(0),
        &server_key,
    )
    .unwrap();
    server
        .server
        .store()
        .put_envelope(
            pvault(vault),
            dooz_protocol::Epoch::new(0),
            pid(&b.keys),
            pid(&a.keys),
            swapped,
        )
        .await
        .unwrap();
    let held = server
        .server
        .store()
        .envelopes_for(pvault(vault), pid(&b.keys))
        .await
        .unwrap();
    let keys_held = held
        .iter()
        .filter(|e| e.epoch != dooz_protocol::ROSTER_EPOCH)
        .count();
    assert_eq!(keys_held, 1, "the server's envelope replaced A's");

    let err = joining
        .finish(&b.conn, &b.keys, &b.index)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PairingError::UntrustedEnvelope { vault: v, epoch: 0 } if v == vault),
        "{err:?}"
    );
    assert!(err.to_string().contains("no vault key was kept"), "{err}");
    assert!(b.index.vault_keys(vault).unwrap().is_empty());
    assert_eq!(b.index.vault_by_name("photos").unwrap(), None);
    server.server.shutdown().await;
}

#[tokio::test]
async fn expired_used_unknown_and_mistyped_codes_each_have_their_own_error() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    a.create_vault("photos").await;
    let b = server.device("beta").await;

    // Mistyped: the check value catches one changed character before anything is sent.
    let invitation = Invitation::open(&a.conn, &a.keys).await.unwrap();
    let text = invitation.code().encode();
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() - 3;
    chars[at] = if chars[at] == 'a' { 'b' } else { 'a' };
    let typo: String = chars.into_iter().collect();
    let err = typo.parse::<PairingCode>().unwrap_err();
    assert_eq!(err, PairingCodeError::Mistyped);
    assert!(err.to_string().contains("mistyped"), "{err}");

    // Expired: 15 minutes pass (the server's pairing clock moves on).
    server.server.advance_pairing_clock(15 * 60 + 1);
    let err = Joining::post(&b.conn, &b.keys, text.parse().unwrap(), "beta")
        .await
        .unwrap_err();
    assert!(matches!(err, PairingError::Expired), "{err:?}");
    assert!(err.to_string().contains("has expired"), "{err}");

    // Used: a code that paired once does not pair again.
    let c = server.device("gamma").await;
    let invitation = Invitation::open(&a.conn, &a.keys).await.unwrap();
    let text = invitation.code().encode();
    let (done, joined) = tokio::join!(invitation.complete(&a.conn, &a.keys, &a.index), async {
        Joining::post(&b.conn, &b.keys, text.parse().unwrap(), "beta")
            .await?
            .finish(&b.conn, &b.keys, &b.index)
            .await
    });
    done.unwrap();
    joined.unwrap();
    let err = Joining::post(&c.conn, &c.keys, text.parse().unwrap(), "gamma")
        .await
        .unwrap_err();
    assert!(matches!(err, PairingError::Used), "{err:?}");
    assert!(err.to_string().contains("used already"), "{err}");

    // Unknown: a well-formed code nobody opened.
    let stray = PairingCode::generate(&a.keys.public()).unwrap();
    let err = Joining::post(&c.conn, &c.keys, stray, "gamma")
        .await
        .unwrap_err();
    assert!(matches!(err, PairingError::UnknownCode), "{err:?}");
    assert!(err.to_string().contains("no pairing is waiting"), "{err}");
    server.server.shutdown().await;
}

/// Every file under `root` with its bytes, sorted.
fn files(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn recovery_on_a_fresh_device_restores_every_file_byte_identically() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    fs::create_dir_all(a.folder.path().join("deep/er")).unwrap();
    fs::write(a.folder.path().join("deep/er/notes.md"), b"# notes\n").unwrap();
    fs::write(a.folder.path().join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(a.folder.path().join("big.bin"), &big).unwrap();
    a.engine(vault).sync().await.unwrap();

    // The first vault's recovery secret: shown once as words.
    let words = dooz_client::set_up_recovery(&a.conn, &a.index)
        .await
        .unwrap()
        .expect("a fresh secret");
    // Set up again: the same secret, nothing new to show.
    assert!(
        dooz_client::set_up_recovery(&a.conn, &a.index)
            .await
            .unwrap()
            .is_none()
    );

    // Every device is lost. A fresh device, enrolled in the account, types the words.
    let fresh = server.device("phoenix").await;
    let wrong = dooz_client::parse_recovery_words(&dooz_client::recovery_words(
        &dooz_crypto::RecoverySecret::generate().unwrap(),
    ))
    .unwrap();
    let err = dooz_client::recover(&fresh.conn, &wrong, &fresh.index)
        .await
        .unwrap_err();
    assert!(
        matches!(err, dooz_client::RecoveryError::WrongSecret(v) if v == vault),
        "{err:?}"
    );
    assert!(fresh.index.vault_keys(vault).unwrap().is_empty());

    let secret = dooz_client::parse_recovery_words(&words).unwrap();
    let got = dooz_client::recover(&fresh.conn, &secret, &fresh.index)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].vault, vault);
    fresh.engine(vault).sync().await.unwrap();
    assert_eq!(files(fresh.folder.path()), files(a.folder.path()));
    server.server.shutdown().await;
}

#[tokio::test]
async fn after_revocation_and_rotation_the_revoked_keys_open_nothing_new() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    let b = server.device("beta").await;
    let c = server.device("gamma").await;
    // A pairs B, then C: B knows only A, C knows A and (from A's reply) B.
    pair(&a, &b).await.unwrap();
    pair(&a, &c).await.unwrap();
    // B hears of C through A's roster.
    let report = dooz_client::maintain_keys(&b.conn, &b.keys, &b.index)
        .await
        .unwrap();
    assert_eq!(report.trusted_added, 1, "{report:?}");
    fs::write(
        a.folder.path().join("old.txt"),
        b"written before the rotation",
    )
    .unwrap();
    a.engine(vault).sync().await.unwrap();

    // A, the device that paired the others, is revoked: the server closes it out and asks
    // for a rotation, which it cannot do.
    server.server.revoke_device(pid(&a.keys)).await.unwrap();
    assert_eq!(
        dooz_client::rotations_due(&c.conn).await.unwrap(),
        vec![vault]
    );
    // The server no longer stores envelopes for A.
    let refused = c
        .conn
        .put_envelope(
            pvault(vault),
            dooz_protocol::Epoch::new(0),
            pid(&a.keys),
            vec![0; 222],
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("revoked"), "{refused}");
    // C comes online first: it stops trusting A and rotates to the devices that remain.
    let report = dooz_client::maintain_keys(&c.conn, &c.keys, &c.index)
        .await
        .unwrap();
    assert_eq!(report.distrusted, 1, "{report:?}");
    assert_eq!(report.rotated, vec![(vault, Epoch(1))], "{report:?}");
    assert!(
        dooz_client::rotations_due(&c.conn)
            .await
            .unwrap()
            .is_empty()
    );
    let head = c.conn.list_vaults().await.unwrap()[0].head_seq;

    // B, which remains, takes the new key from C (whom it trusts through A's roster).
    let report = dooz_client::maintain_keys(&b.conn, &b.keys, &b.index)
        .await
        .unwrap();
    assert_eq!(report.received, vec![(vault, Epoch(1))], "{report:?}");
    assert!(report.rotated.is_empty(), "{report:?}");
    // Nothing further to do on either.
    for d in [&b, &c] {
        let again = dooz_client::maintain_keys(&d.conn, &d.keys, &d.index)
            .await
            .unwrap();
        assert!(again.is_empty(), "{}: {again:?}", d.name);
    }

    // New data is sealed under the new epoch.
    let fresh: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    b.engine(vault).sync().await.unwrap();
    fs::write(b.folder.path().join("new.bin"), &fresh).unwrap();
    fs::write(
        b.folder.path().join("new.txt"),
        b"written after the rotation",
    )
    .unwrap();
    b.engine(vault).sync().await.unwrap();
    c.engine(vault).sync().await.unwrap();
    assert_eq!(files(c.folder.path()), files(b.folder.path()));
    assert_eq!(fs::read(c.folder.path().join("new.bin")).unwrap(), fresh);
    assert_eq!(
        fs::read(c.folder.path().join("old.txt")).unwrap(),
        b"written before the rotation"
    );

    // A's keys, tried on every record and chunk written after the rotation: none opens.
    let revoked = keyring_from_index(&a.index, vault).unwrap();
    let remaining = keyring_from_index(&c.index, vault).unwrap();
    let page = c.conn.pull(pvault(vault), head, 1000).await.unwrap();
    assert!(!page.changes.is_empty());
    let mut chunks = 0;
    for change in &page.changes {
        assert_eq!(change.epoch.get(), 1);
        let entry = dooz_crypto::EntryKey::from_bytes(*change.entry.as_bytes());
        let version = dooz_crypto::VersionId::from_bytes(*change.version.as_bytes());
        assert!(
            revoked
                .open_record(&entry, &version, &change.record)
                .is_err()
        );
        assert!(
            remaining
                .open_record(&entry, &version, &change.record)
                .is_ok()
        );
        for id in &change.chunks {
            let sealed = c.conn.get_chunk(pvault(vault), *id).await.unwrap();
            let cid = dooz_crypto::ChunkId::from_bytes(*id.as_bytes());
            assert!(revoked.open_chunk(&cid, &sealed).is_err());
            assert!(remaining.open_chunk(&cid, &sealed).is_ok());
            chunks += 1;
        }
    }
    assert!(chunks >= 2, "{chunks} chunks checked");
    // The revoked device is not trusted by anyone, and no envelope of epoch 1 is its.
    for d in [&b, &c] {
        assert!(!d.index.trusted_peers().unwrap().contains(&a.keys.public()));
    }
    let to_a = server
        .server
        .store()
        .envelopes_for(pvault(vault), pid(&a.keys))
        .await
        .unwrap();
    assert!(
        to_a.iter()
            .all(|e| e.epoch.get() == 0 || e.epoch == dooz_protocol::ROSTER_EPOCH),
        "{to_a:?}"
    );
    server.server.shutdown().await;
}

#[tokio::test]
async fn two_devices_rotating_at_once_agree_on_one_key() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    let b = server.device("beta").await;
    let c = server.device("gamma").await;
    let d = server.device("delta").await;
    pair(&a, &b).await.unwrap();
    pair(&a, &c).await.unwrap();
    pair(&a, &d).await.unwrap();
    server.server.revoke_device(pid(&d.keys)).await.unwrap();
    let (rb, rc) = tokio::join!(
        dooz_client::maintain_keys(&b.conn, &b.keys, &b.index),
        dooz_client::maintain_keys(&a.conn, &a.keys, &a.index),
    );
    let (rb, ra) = (rb.unwrap(), rc.unwrap());
    assert_eq!(
        rb.rotated.len() + ra.rotated.len(),
        1,
        "exactly one device rotates: {rb:?} {ra:?}"
    );
    // Once each has run again, A, B and C hold the same key of epoch 1; D none.
    for dev in [&a, &b, &c, &a, &b] {
        dooz_client::maintain_keys(&dev.conn, &dev.keys, &dev.index)
            .await
            .unwrap();
    }
    let key = |dev: &Device| {
        dev.index
            .vault_keys(vault)
            .unwrap()
            .into_iter()
            .find(|(e, _)| *e == Epoch(1))
            .map(|(_, k)| *k.expose_secret())
    };
    let ka = key(&a).expect("A holds epoch 1");
    assert_eq!(key(&b), Some(ka));
    assert_eq!(key(&c), Some(ka));
    assert_eq!(key(&d), None);
    server.server.shutdown().await;
}

#[tokio::test]
async fn an_engine_started_before_a_rotation_fetches_the_new_key_by_itself() {
    let server = TestServer::start().await;
    let a = server.device("alpha").await;
    let vault = a.create_vault("photos").await;
    let b = server.device("beta").await;
    let c = server.device("gamma").await;
    pair(&a, &b).await.unwrap();
    pair(&a, &c).await.unwrap();
    dooz_client::maintain_keys(&b.conn, &b.keys, &b.index)
        .await
        .unwrap();
    // B's engine (as in `dooz sync --watch`) holds only epoch 0.
    let mut b_engine = b.engine(vault);
    b_engine.sync().await.unwrap();

    server.server.revoke_device(pid(&a.keys)).await.unwrap();
    let rotated = dooz_client::maintain_keys(&c.conn, &c.keys, &c.index)
        .await
        .unwrap();
    assert_eq!(rotated.rotated, vec![(vault, Epoch(1))]);
    fs::write(c.folder.path().join("after.txt"), b"sealed under epoch 1").unwrap();
    c.engine(vault).sync().await.unwrap();

    // B's old engine cannot open the new record at first; it fetches the key and goes on.
    let connector = dooz_client::Connector::new(
        server.server.local_addr().to_string(),
        server.fingerprint,
        DeviceSecretKeys::from_bytes(&b.keys.to_bytes()),
    );
    let report = b_engine.sync_with_reconnect(&connector, 3).await.unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(
        fs::read(b.folder.path().join("after.txt")).unwrap(),
        b"sealed under epoch 1"
    );
    assert!(
        b.index
            .vault_keys(vault)
            .unwrap()
            .iter()
            .any(|(e, _)| *e == Epoch(1))
    );
    server.server.shutdown().await;
}

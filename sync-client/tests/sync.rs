//! End-to-end sync tests: an in-process `dooz-server` on loopback QUIC and two devices with
//! their own folders and indexes in temp dirs. Every test runs with the server's blobs on a
//! `LocalDir` (`local::`) and on a bucket of an in-process S3 server (`s3::`), and on two
//! server instances sharing a PostgreSQL store and a blob directory, the first device on one
//! and the second on the other (`two_instances::`, docs/SCALE-OUT.md); `faults::` syncs
//! through a blob store failing 20% of its calls, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_client::{
    Connection, Connector, Engine, EngineError, EngineOptions, Index, NetError, keyring_from_index,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, VaultId, VaultKey};
use dooz_server::service::{Server, ServerParts};
use dooz_server::tls::ServerIdentity;
use dooz_server::transport::TransportTuning;
use dooz_server::{AccountId, DeviceRegistration, MetaStore, SledStore};
use dooz_storage::testing::S3Server;
use dooz_storage::{
    BlobKey, BlobStore, FaultInjecting, LocalDir, Meter, Metered, PutFaultMode, RetryPolicy,
    Retrying,
};
use tempfile::TempDir;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Where the server keeps its blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `LocalDir` in a temp dir.
    Local,
    /// A bucket on an in-process S3 server (s3s-fs), behind `Retrying` as `dooz-server` opens
    /// remote stores.
    S3,
}

struct TestServer {
    server: Server,
    account: AccountId,
    fingerprint: [u8; 32],
    /// The blob store under the server's adapters (no meter, no retries, no faults): tests
    /// inspect and damage blobs through it.
    raw_blobs: Arc<dyn BlobStore>,
    /// Counts the bytes the server's blob store takes in and gives out.
    meter: Meter,
    /// The fault injector under the server's retries, if started with faults.
    faults: Option<Arc<FaultInjecting<Arc<dyn BlobStore>>>>,
    /// The retrying layer above the fault injector, if started with faults.
    retrying: Option<Arc<Retrying<Arc<dyn BlobStore>>>>,
    /// Kept alive for the server: the blob directory or the S3 server.
    _backend: (Option<TempDir>, Option<S3Server>),
    /// A second instance sharing the store and the blobs (`two_instances::`).
    second: Option<Server>,
    /// Devices made so far: they alternate between the instances.
    devices: std::sync::atomic::AtomicUsize,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_on(Backend::Local, None).await
    }

    async fn start_s3() -> Self {
        Self::start_on(Backend::S3, None).await
    }

    /// A server on `backend`. With `faults`, its blob store is
    /// `Retrying(FaultInjecting(backend))` with that retry policy (failed puts land on S3, not on
    /// `LocalDir`), the faults set by the
    /// caller through [`TestServer::faults`]; without, `Retrying(backend)` on S3 (as
    /// `dooz-server` opens remote stores) and the bare `LocalDir` otherwise. The meter counts
    /// above all of that.
    async fn start_on(backend: Backend, faults: Option<RetryPolicy>) -> Self {
        let (raw_blobs, kept): (Arc<dyn BlobStore>, _) = match backend {
            Backend::Local => {
                let dir = tempfile::tempdir().unwrap();
                let blobs = Arc::new(LocalDir::open(dir.path()).unwrap());
                (blobs, (Some(dir), None))
            }
            Backend::S3 => {
                let s3 = S3Server::start().await.unwrap();
                let blobs = Arc::new(s3.config().open_bucket().unwrap());
                (blobs, (None, Some(s3)))
            }
        };
        let mut injecting = None;
        let mut retrying = None;
        let served: Arc<dyn BlobStore> = match (faults, backend) {
            (Some(policy), _) => {
                // On S3 a failed put may have landed (a lost response); on LocalDir it never
                // did (a request that never arrived).
                let mode = match backend {
                    Backend::Local => PutFaultMode::BeforeWrite,
                    Backend::S3 => PutFaultMode::AfterWrite,
                };
                let f = Arc::new(
                    FaultInjecting::new(Arc::clone(&raw_blobs), 0x5eed).with_put_mode(mode),
                );
                injecting = Some(Arc::clone(&f));
                let r = Arc::new(
                    Retrying::new(f as Arc<dyn BlobStore>)
                        .with_policy(policy)
                        .unwrap(),
                );
                retrying = Some(Arc::clone(&r));
                r
            }
            (None, Backend::S3) => Arc::new(Retrying::new(Arc::clone(&raw_blobs))),
            (None, Backend::Local) => Arc::clone(&raw_blobs),
        };
        let mut server = Self::start_with(served, raw_blobs, kept).await;
        server.faults = injecting;
        server.retrying = retrying;
        server
    }

    async fn start_with(
        blobs: Arc<dyn BlobStore>,
        raw_blobs: Arc<dyn BlobStore>,
        kept: (Option<TempDir>, Option<S3Server>),
    ) -> Self {
        let store = Arc::new(SledStore::temporary().unwrap());
        let tenant = store.create_tenant("test").await.unwrap();
        let account = store.create_account(tenant, "ana").await.unwrap();
        let identity = ServerIdentity::generate().unwrap();
        let fingerprint = *blake3::hash(identity.cert_der()).as_bytes();
        let meter = Meter::new();
        let blobs = Metered::with_meter(blobs, meter.clone());
        let parts = ServerParts {
            store,
            blobs: Arc::new(blobs),
            identity,
            listen: "127.0.0.1:0".parse().unwrap(),
            tuning: TransportTuning::default(),
            limits: Default::default(),
            shutdown_grace: Duration::from_secs(1),
            policy: Arc::new(dooz_server::policy::Unlimited),
        };
        let server = Server::start(parts).unwrap();
        Self {
            server,
            account,
            fingerprint,
            raw_blobs,
            meter,
            faults: None,
            retrying: None,
            _backend: kept,
            second: None,
            devices: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Two instances, as two `dooz-server` processes would run them: each with its own
    /// connection pool and listener on one PostgreSQL schema (`DOOZ_TEST_POSTGRES`), the same
    /// blob directory and the same TLS identity.
    async fn start_two_instances() -> Self {
        let url = std::env::var("DOOZ_TEST_POSTGRES").expect(
            "DOOZ_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a \
             throwaway PostgreSQL",
        );
        let schema: String = VaultId::generate().unwrap().0[..8]
            .iter()
            .fold("sync_".to_owned(), |s, b| s + &format!("{b:02x}"));
        let blob_dir = tempfile::tempdir().unwrap();
        let identity_dir = tempfile::tempdir().unwrap();
        let raw_blobs: Arc<dyn BlobStore> = Arc::new(LocalDir::open(blob_dir.path()).unwrap());
        let meter = Meter::new();
        let mut servers = Vec::new();
        let mut account = None;
        for _ in 0..2 {
            let store = Arc::new(
                dooz_server::PgStore::connect_schema(&url, &schema, 8)
                    .await
                    .unwrap(),
            );
            if account.is_none() {
                let tenant = store.create_tenant("test").await.unwrap();
                account = Some(store.create_account(tenant, "ana").await.unwrap());
            }
            let parts = ServerParts {
                store,
                blobs: Arc::new(Metered::with_meter(Arc::clone(&raw_blobs), meter.clone())),
                identity: ServerIdentity::load_or_create(identity_dir.path()).unwrap(),
                listen: "127.0.0.1:0".parse().unwrap(),
                tuning: TransportTuning::default(),
                limits: Default::default(),
                shutdown_grace: Duration::from_secs(1),
                policy: Arc::new(dooz_server::policy::Unlimited),
            };
            servers.push(Server::start(parts).unwrap());
        }
        let second = servers.pop();
        let server = servers.pop().unwrap();
        let identity = ServerIdentity::load_or_create(identity_dir.path()).unwrap();
        Self {
            server,
            account: account.unwrap(),
            fingerprint: *blake3::hash(identity.cert_der()).as_bytes(),
            raw_blobs,
            meter,
            faults: None,
            retrying: None,
            _backend: (Some(blob_dir), None),
            second,
            devices: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    /// The address the next device uses: with two instances, devices alternate between them.
    fn device_addr(&self) -> String {
        let n = self
            .devices
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.second {
            Some(second) if n % 2 == 1 => second.local_addr().to_string(),
            _ => self.addr(),
        }
    }

    async fn enrol(&self, keys: &DeviceSecretKeys, name: &str) {
        let store = self.server.store();
        let token = store
            .create_enrolment_token(self.account, now() + 900, false)
            .await
            .unwrap();
        let public = keys.public();
        let registration = DeviceRegistration {
            device: dooz_protocol::DeviceId::from_bytes(*keys.device_id().as_bytes()),
            identity_key: public.identity,
            exchange_key: public.exchange,
            name: name.to_owned(),
        };
        store
            .redeem_enrolment(token.expose(), registration, now())
            .await
            .unwrap();
    }
}

struct Device {
    connector: Connector,
    folder: TempDir,
    _index_dir: TempDir,
    engine: Engine,
}

impl Device {
    async fn new(server: &TestServer, name: &str, vault: VaultId, key: [u8; 32]) -> Self {
        let keys = DeviceSecretKeys::generate().unwrap();
        server.enrol(&keys, name).await;
        let addr = server.device_addr();
        let conn = Connection::connect(&addr, &server.fingerprint, &keys)
            .await
            .unwrap();
        conn.create_vault(dooz_protocol::VaultId::from_bytes(vault.0))
            .await
            .unwrap();
        let folder = tempfile::tempdir().unwrap();
        let index_dir = tempfile::tempdir().unwrap();
        let index = Index::open(index_dir.path()).unwrap();
        let vault_index = index.add_vault(vault, folder.path()).unwrap();
        index
            .put_vault_key(vault, Epoch(1), &VaultKey::from_bytes(key))
            .unwrap();
        let keyring = keyring_from_index(&index, vault).unwrap();
        let options = EngineOptions {
            parallel_transfers: 8,
            ..EngineOptions::default()
        };
        let engine = Engine::new(vault_index, keyring, conn, name, options).unwrap();
        let connector = Connector::new(
            addr,
            server.fingerprint,
            DeviceSecretKeys::from_bytes(&keys.to_bytes()),
        );
        Self {
            connector,
            folder,
            _index_dir: index_dir,
            engine,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.folder.path().join(rel)
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap()
    }

    async fn sync(&mut self) -> dooz_client::SyncReport {
        self.engine.sync().await.unwrap()
    }

    /// Syncs until a sync succeeds, retrying (after reconnecting if need be) while the engine
    /// says its error is retryable; any other error fails the test. Returns the report and
    /// the number of failed attempts.
    async fn sync_until_done(&mut self) -> (dooz_client::SyncReport, u32) {
        let mut failed = 0;
        loop {
            if self.engine.connection().close_reason().is_some() {
                let conn = self.connector.connect().await.unwrap();
                self.engine.set_connection(conn);
            }
            match self.engine.sync().await {
                Ok(report) => return (report, failed),
                Err(e) if e.is_retryable() && failed < 50 => failed += 1,
                Err(e) => panic!("sync failed after {failed} retryable failures: {e}"),
            }
        }
    }
}

/// Every file and directory under `root` (relative path, content or `None` for a dir, mode),
/// sorted.
fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.push((rel, None, 0));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(fs::read(&p).unwrap()), mode));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&counter.to_le_bytes());
        out.extend_from_slice(h.finalize().as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

async fn pair(server: &TestServer) -> (Device, Device) {
    let vault = VaultId::generate().unwrap();
    let key = *VaultKey::generate().unwrap().expose_secret();
    let a = Device::new(server, "alpha", vault, key).await;
    let b = Device::new(server, "beta", vault, key).await;
    (a, b)
}

/// Runs each named test (an `async fn(TestServer)`) three times: `local::name` on a `LocalDir`,
/// `s3::name` on a bucket of an in-process S3 server, `two_instances::name` on two instances
/// sharing PostgreSQL (devices alternate between them).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::TestServer::start().await).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestServer::start_s3().await).await;
                }
            )*
        }
        mod two_instances {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestServer::start_two_instances().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_folder_propagates_both_ways,
    renames_move_no_chunk_bytes_and_inserts_move_few,
    concurrent_edits_keep_both_versions,
    a_corrupted_chunk_is_reported_and_the_old_copy_kept,
    an_unknown_device_is_refused_with_a_clear_message,
    a_modification_survives_a_concurrent_deletion,
    subscribers_hear_about_commits,
    an_interrupted_upload_resumes_without_resending_acknowledged_chunks,
    a_lost_connection_is_reopened,
    an_edit_made_after_the_scan_is_never_overwritten,
    an_edit_made_after_the_scan_survives_a_remote_deletion,
    downloads_follow_the_local_ignore_rules,
    the_watcher_follows_pushes_and_local_edits_without_echo,
    one_watcher_serves_several_vaults_and_stops_cleanly,
    progress_is_reported_and_downloaded_files_match_the_index,
);

async fn a_folder_propagates_both_ways(server: TestServer) {
    use std::os::unix::fs::PermissionsExt;
    let (mut a, mut b) = pair(&server).await;

    a.write("hello.txt", b"hello world\n");
    a.write("empty", b"");
    a.write("nested/deeper/data.bin", &pseudo_random(300_000, 1));
    a.write("nested/notes.md", b"# notes\n");
    fs::create_dir_all(a.path("empty-dir")).unwrap();
    fs::set_permissions(a.path("hello.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(a.path("nested/notes.md"), fs::Permissions::from_mode(0o755)).unwrap();
    let up = a.sync().await;
    assert!(up.committed >= 7, "{up:?}");
    let down = b.sync().await;
    assert!(down.applied >= 7, "{down:?}");
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));

    // Edits, appends, deletes and renames on B go back to A.
    b.write("hello.txt", b"hello again\n");
    let mut data = b.read("nested/deeper/data.bin");
    data.extend_from_slice(b"appended");
    b.write("nested/deeper/data.bin", &data);
    fs::remove_file(b.path("empty")).unwrap();
    fs::rename(b.path("nested/notes.md"), b.path("notes-moved.md")).unwrap();
    fs::remove_dir(b.path("empty-dir")).unwrap();
    b.sync().await;
    a.sync().await;
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));
    assert_eq!(a.read("hello.txt"), b"hello again\n");
    assert!(!a.path("empty").exists());
    assert!(!a.path("empty-dir").exists());
    let mode = fs::metadata(a.path("notes-moved.md"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // Nothing left to do: a second sync is a no-op.
    let idle = a.sync().await;
    assert_eq!((idle.committed, idle.applied), (0, 0), "{idle:?}");
}

async fn renames_move_no_chunk_bytes_and_inserts_move_few(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    let big = pseudo_random(64 * 1024 * 1024, 7);
    a.write("big.bin", &big);
    server.meter.reset();
    let first = a.sync().await;
    let stored = server
        .server
        .store()
        .account_usage(server.account)
        .await
        .unwrap()
        .stored_bytes;
    assert!(stored >= big.len() as u64, "{first:?}");
    assert_eq!(
        first.bytes_uploaded, stored,
        "the report agrees with the server's stored bytes"
    );
    // The blob store took those bytes plus the packs' indexes (76 bytes a chunk).
    let written = server.meter.snapshot().bytes_in;
    assert!(
        (stored..stored + stored / 100).contains(&written),
        "{written} B written for {stored} B of chunks"
    );
    b.sync().await;

    // A rename moves no chunk bytes, up or down.
    fs::create_dir_all(a.path("moved")).unwrap();
    fs::rename(a.path("big.bin"), a.path("moved/big.bin")).unwrap();
    server.meter.reset();
    let renamed = a.sync().await;
    assert_eq!(server.meter.snapshot().bytes_in, 0, "{renamed:?}");
    let down = b.sync().await;
    let meter = server.meter.snapshot();
    assert_eq!(
        (down.chunks_downloaded, meter.bytes_out),
        (0, 0),
        "renames reuse local chunks: {down:?}"
    );
    assert_eq!(b.read("moved/big.bin"), big);

    // An 8 KiB insert in the middle uploads only the chunks it touched: at most three
    // maximum-size chunks (the one cut by the insert and its neighbours while the cut
    // points resynchronise), plus the padding and AEAD overhead of each sealed chunk.
    let mut edited = big.clone();
    let mid = edited.len() / 2;
    edited.splice(mid..mid, pseudo_random(8 * 1024, 9));
    a.write("moved/big.bin", &edited);
    server.meter.reset();
    let insert = a.sync().await;
    let uploaded = server.meter.snapshot().bytes_in;
    let max_chunk = u64::from(dooz_client::ChunkerConfig::DEFAULT.max());
    assert!(uploaded > 8 * 1024, "{insert:?}");
    assert!(
        uploaded <= 3 * max_chunk,
        "uploaded {uploaded} B: {insert:?}"
    );
    b.sync().await;
    assert_eq!(b.read("moved/big.bin"), edited);
}

async fn concurrent_edits_keep_both_versions(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("doc.txt", b"base\n");
    a.sync().await;
    b.sync().await;

    a.write("doc.txt", b"edited on alpha\n");
    b.write("doc.txt", b"edited on beta, longer\n");
    a.sync().await;
    let r = b.sync().await;
    assert_eq!(r.conflicts, 1, "{r:?}");
    a.sync().await;

    let ta = tree(a.folder.path());
    assert_eq!(ta, tree(b.folder.path()));
    assert_eq!(b.read("doc.txt"), b"edited on alpha\n");
    let copies: Vec<_> = ta
        .iter()
        .filter(|(p, _, _)| p.starts_with("doc (conflicted copy from beta "))
        .collect();
    assert_eq!(copies.len(), 1, "{ta:?}");
    assert_eq!(
        copies[0].1.as_deref(),
        Some(&b"edited on beta, longer\n"[..])
    );
}

async fn a_corrupted_chunk_is_reported_and_the_old_copy_kept(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("precious.bin", &pseudo_random(100_000, 3));
    a.sync().await;
    b.sync().await;
    let before = blob_keys(&server).await;

    a.write("precious.bin", &pseudo_random(100_000, 4));
    a.sync().await;
    // Flip a bit in every blob written since, through the store (a disk or a bucket).
    let mut flipped = 0;
    for key in blob_keys(&server).await {
        if !before.contains(&key) {
            let mut bytes = server.raw_blobs.get(&key).await.unwrap().to_vec();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x40;
            server.raw_blobs.put(&key, bytes.into()).await.unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0);
    let err = b.engine.sync().await.unwrap_err();
    assert!(
        matches!(err, EngineError::Integrity { ref path, .. } if path == "precious.bin"),
        "{err}"
    );
    assert!(err.to_string().contains("precious.bin"), "{err}");
    assert_eq!(b.read("precious.bin"), pseudo_random(100_000, 3));
}

/// The keys of every blob the server stores, sorted.
async fn blob_keys(server: &TestServer) -> Vec<BlobKey> {
    let mut keys: Vec<_> = server
        .raw_blobs
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    keys.sort();
    keys
}

async fn an_unknown_device_is_refused_with_a_clear_message(server: TestServer) {
    let keys = DeviceSecretKeys::generate().unwrap();
    let err = Connection::connect(&server.addr(), &server.fingerprint, &keys)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NotEnrolled { .. }), "{err:?}");
    assert!(err.to_string().contains("dooz enroll"), "{err}");
    assert!(!err.is_retryable());

    // A wrong pin is refused before anything is sent.
    server.enrol(&keys, "gamma").await;
    let err = Connection::connect(&server.addr(), &[0; 32], &keys)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::ServerCertMismatch { .. }),
        "{err:?}"
    );
}

async fn a_modification_survives_a_concurrent_deletion(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("keep.txt", b"v1\n");
    a.write("gone.txt", b"v1\n");
    a.sync().await;
    b.sync().await;

    // A deletes what B modifies, and the other way round.
    fs::remove_file(a.path("keep.txt")).unwrap();
    a.write("gone.txt", b"v2 from alpha\n");
    b.write("keep.txt", b"v2 from beta\n");
    fs::remove_file(b.path("gone.txt")).unwrap();
    a.sync().await;
    b.sync().await;
    a.sync().await;

    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));
    assert_eq!(a.read("keep.txt"), b"v2 from beta\n");
    assert_eq!(b.read("gone.txt"), b"v2 from alpha\n");
}

async fn subscribers_hear_about_commits(server: TestServer) {
    let (mut a, b) = pair(&server).await;
    let vault = dooz_protocol::VaultId::from_bytes(b.engine.vault_index().vault().0);
    let mut sub = b.engine.connection().subscribe(vec![vault]).await.unwrap();
    a.write("x", b"x");
    a.sync().await;
    let changed = sub.next().await.unwrap().unwrap();
    assert_eq!(changed.vault, vault);
    assert!(changed.seq.get() >= 1);
}

async fn an_interrupted_upload_resumes_without_resending_acknowledged_chunks(server: TestServer) {
    use dooz_client::{PendingUpload, RelPath};
    let (mut a, mut b) = pair(&server).await;
    let data = pseudo_random(1024 * 1024, 11);
    a.write("big.bin", &data);
    a.engine.scan().unwrap();

    // What a run killed after sending half the chunks leaves behind: the journal entry and
    // the acknowledged chunks, on the server and in the index.
    let vi = a.engine.vault_index().clone();
    let path = RelPath::new("big.bin").unwrap();
    let local = vi.local(&path).unwrap().unwrap();
    let version = dooz_crypto::VersionId::generate().unwrap();
    vi.begin_upload(
        &path,
        &PendingUpload {
            version,
            parent: None,
            state: Some(local.state),
            started_at: now(),
        },
    )
    .unwrap();
    let ring = keyring_from_index(vi.index(), vi.vault()).unwrap();
    let epoch = ring.latest().unwrap();
    let mut offset = 0usize;
    let half = local.chunks.len() / 2;
    assert!(half > 4);
    let mut sent = Vec::new();
    for c in &local.chunks[..half] {
        let plain = &data[offset..offset + c.len as usize];
        offset += c.len as usize;
        let sealed = epoch.seal_chunk(&c.id, plain).unwrap();
        a.engine
            .connection()
            .put_chunk(
                dooz_protocol::VaultId::from_bytes(vi.vault().0),
                dooz_protocol::ChunkId::from_bytes(*c.id.as_bytes()),
                sealed.into(),
            )
            .await
            .unwrap();
        sent.push(c.id);
    }
    vi.record_acked(&sent).unwrap();

    let before = a.engine.connection().stats().chunks_sent;
    let r = a.sync().await;
    let sent_now = a.engine.connection().stats().chunks_sent - before;
    assert_eq!(sent_now, (local.chunks.len() - half) as u64, "{r:?}");
    assert_eq!(r.chunks_skipped, half as u64, "{r:?}");
    // The commit carries the version chosen before the interruption.
    assert_eq!(vi.remote(&path).unwrap().unwrap().version, version);
    assert!(vi.pending_uploads().unwrap().is_empty());
    b.sync().await;
    assert_eq!(b.read("big.bin"), data);
}

async fn a_lost_connection_is_reopened(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.engine.connection().close().await;
    a.write("after-reconnect.txt", b"still syncing\n");
    let err = a.engine.sync().await.unwrap_err();
    assert!(err.is_connection_lost() && err.is_retryable(), "{err}");
    let r = a.engine.sync_with_reconnect(&a.connector, 3).await.unwrap();
    assert_eq!(r.committed, 1, "{r:?}");
    b.sync().await;
    assert_eq!(b.read("after-reconnect.txt"), b"still syncing\n");
}

async fn an_edit_made_after_the_scan_is_never_overwritten(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("race.txt", b"v1\n");
    a.sync().await;
    b.sync().await;
    a.write("race.txt", b"v2 from alpha\n");
    a.sync().await;

    // B edits the file after its last scan, then downloads without scanning again.
    b.write("race.txt", b"unscanned edit on beta\n");
    let r = b.engine.download().await.unwrap();
    assert_eq!(r.changed_locally, 1, "{r:?}");
    assert_eq!(b.read("race.txt"), b"unscanned edit on beta\n");

    // A full sync sees the conflict and keeps both.
    b.sync().await;
    a.sync().await;
    let t = tree(b.folder.path());
    assert_eq!(t, tree(a.folder.path()));
    assert_eq!(b.read("race.txt"), b"v2 from alpha\n");
    assert!(
        t.iter()
            .any(|(_, c, _)| c.as_deref() == Some(&b"unscanned edit on beta\n"[..])),
        "{t:?}"
    );
}

async fn an_edit_made_after_the_scan_survives_a_remote_deletion(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("doomed.txt", b"v1\n");
    a.sync().await;
    b.sync().await;
    std::fs::remove_file(a.path("doomed.txt")).unwrap();
    a.sync().await;

    // B edits the file after its last scan; the download must not delete the edit.
    b.write("doomed.txt", b"unscanned edit on beta, longer\n");
    let r = b.engine.download().await.unwrap();
    assert_eq!(r.changed_locally, 1, "{r:?}");
    assert_eq!(b.read("doomed.txt"), b"unscanned edit on beta, longer\n");

    // A full sync keeps the modification against the deletion, on both sides.
    b.sync().await;
    a.sync().await;
    assert_eq!(a.read("doomed.txt"), b"unscanned edit on beta, longer\n");
    assert_eq!(tree(b.folder.path()), tree(a.folder.path()));
}

async fn downloads_follow_the_local_ignore_rules(server: TestServer) {
    let (mut a, mut b) = pair(&server).await;
    a.write("keep.txt", b"keep\n");
    a.write("noise.log", b"noise\n");
    a.sync().await;
    b.write(".doozignore", b"*.log\n");
    b.sync().await;
    assert_eq!(b.read("keep.txt"), b"keep\n");
    assert!(!b.path("noise.log").exists());
    a.sync().await;
    assert_eq!(a.read(".doozignore"), b"*.log\n");
}

// ---- watch mode and progress ----

/// Collects a watcher's events and waits, with a bounded deadline, for one that matches.
struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<dooz_client::WatchEvent>,
    seen: Vec<String>,
    /// Entries committed by the syncs seen so far.
    committed: u64,
}

impl Events {
    fn new() -> (Self, impl FnMut(dooz_client::WatchEvent) + Send + 'static) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = move |e| {
            let _ = tx.send(e);
        };
        (
            Self {
                rx,
                seen: Vec::new(),
                committed: 0,
            },
            sink,
        )
    }

    /// The first event from now on for which `pred` holds; fails after 60 s.
    async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&dooz_client::WatchEvent) -> bool,
    ) -> dooz_client::WatchEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within 60 s; events: {:#?}", self.seen))
                .unwrap_or_else(|| panic!("the watcher ended before {what}: {:#?}", self.seen));
            self.seen.push(format!("{e:?}"));
            if let dooz_client::WatchEvent::Synced { report, .. } = &e {
                self.committed += report.committed;
            }
            if pred(&e) {
                return e;
            }
        }
    }
}

async fn the_watcher_follows_pushes_and_local_edits_without_echo(server: TestServer) {
    use dooz_client::{Trigger, WatchEvent, WatchOptions, Watcher};
    let (mut a, b) = pair(&server).await;
    let Device {
        connector,
        folder: b_folder,
        _index_dir: _b_index,
        engine,
    } = b;
    // No periodic rescan: only pushes and file notifications can trigger these syncs.
    let options = WatchOptions {
        rescan_interval: None,
        ..WatchOptions::default()
    };
    let watcher = Watcher::new(vec![engine], connector, options).unwrap();
    let stop = watcher.stop_handle();
    let (mut events, sink) = Events::new();
    let task = tokio::spawn(watcher.run(sink));
    events
        .until("Watching", |e| {
            matches!(
                e,
                WatchEvent::Watching {
                    vaults: 1,
                    file_notifications: true
                }
            )
        })
        .await;

    // A commits; the server's push makes B pull and apply it.
    a.write("from-a/notes.txt", b"written on alpha\n");
    a.sync().await;
    let down = events
        .until("the pushed change applied", |e| {
            matches!(e, WatchEvent::Synced { trigger: Trigger::RemoteChange, report, .. }
                if report.applied >= 2)
        })
        .await;
    assert_eq!(
        fs::read(b_folder.path().join("from-a/notes.txt")).unwrap(),
        b"written on alpha\n"
    );
    let WatchEvent::Synced { report, .. } = down else {
        unreachable!()
    };
    assert_eq!(report.committed, 0, "{report:?}");

    // B is notified of its own download's writes and finds nothing to do: no echo.
    events
        .until("the download's own writes checked", |e| {
            matches!(
                e,
                WatchEvent::NothingToSync {
                    trigger: Trigger::LocalChange,
                    ..
                }
            )
        })
        .await;

    // A file written into B's folder is noticed and uploaded.
    fs::write(b_folder.path().join("from-b.txt"), b"written on beta\n").unwrap();
    events
        .until("the local file uploaded", |e| {
            matches!(e, WatchEvent::Synced { trigger: Trigger::LocalChange, report, .. }
                if report.committed == 1)
        })
        .await;
    // The server pushes B's own commit back; a pull shows there is nothing to apply.
    events
        .until("the push of B's own commit checked", |e| {
            matches!(
                e,
                WatchEvent::NothingToSync {
                    trigger: Trigger::RemoteChange,
                    ..
                }
            )
        })
        .await;
    a.sync().await;
    assert_eq!(a.read("from-b.txt"), b"written on beta\n");
    assert_eq!(tree(a.folder.path()), tree(b_folder.path()));

    stop.stop();
    let engines = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the watcher stops")
        .unwrap();
    assert_eq!(engines.len(), 1);
    events
        .until("Stopped", |e| matches!(e, WatchEvent::Stopped))
        .await;
    // Over the whole run B committed exactly one entry: its own new file.
    assert_eq!(events.committed, 1, "{:#?}", events.seen);
}

async fn one_watcher_serves_several_vaults_and_stops_cleanly(server: TestServer) {
    use dooz_client::{StopHandle, Trigger, WatchError, WatchEvent, WatchOptions, Watcher};
    let (_a1, b1) = pair(&server).await;
    let (mut a2, b2) = pair(&server).await;
    let vault2 = b2.engine.vault_index().vault();
    let b2_folder = b2.folder;
    let b1_folder = b1.folder;

    // Stopped before it runs: it returns at once, having synced nothing.
    let watcher = Watcher::new(
        vec![b1.engine, b2.engine],
        b1.connector,
        WatchOptions::default(),
    )
    .unwrap();
    watcher.stop_handle().stop();
    let (mut events, sink) = Events::new();
    let engines = tokio::time::timeout(Duration::from_secs(30), watcher.run(sink))
        .await
        .expect("a stopped watcher returns");
    assert_eq!(engines.len(), 2);
    events
        .until("Stopped", |e| matches!(e, WatchEvent::Stopped))
        .await;
    assert!(
        !events.seen.iter().any(|e| e.starts_with("SyncStarted")),
        "{:#?}",
        events.seen
    );

    // Bad input is refused up front.
    let keys = DeviceSecretKeys::generate().unwrap();
    let other = || {
        Connector::new(
            server.addr(),
            server.fingerprint,
            DeviceSecretKeys::from_bytes(&keys.to_bytes()),
        )
    };
    assert!(matches!(
        Watcher::new(Vec::new(), other(), WatchOptions::default()),
        Err(WatchError::NoVaults)
    ));

    // Running: a file in the second folder is uploaded to the second vault.
    server.enrol(&keys, "watcher").await;
    let watcher = Watcher::new(engines, other(), WatchOptions::default()).unwrap();
    let stop: StopHandle = watcher.stop_handle();
    let (mut events, sink) = Events::new();
    let task = tokio::spawn(watcher.run(sink));
    events
        .until("Watching", |e| {
            matches!(e, WatchEvent::Watching { vaults: 2, .. })
        })
        .await;
    fs::write(b2_folder.path().join("second.txt"), b"for vault two\n").unwrap();
    events
        .until("the second vault's upload", |e| {
            matches!(e, WatchEvent::Synced { vault, trigger: Trigger::LocalChange, report }
                if *vault == vault2 && report.committed == 1)
        })
        .await;
    a2.sync().await;
    assert_eq!(a2.read("second.txt"), b"for vault two\n");

    // Stopped while watching: it returns promptly with the engines, which still work.
    stop.stop();
    assert!(stop.is_stopped());
    let mut engines = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the watcher stops")
        .unwrap();
    events
        .until("Stopped", |e| matches!(e, WatchEvent::Stopped))
        .await;
    assert!(
        events.rx.recv().await.is_none(),
        "Stopped is the last event"
    );
    for engine in &mut engines {
        let idle = engine.sync().await.unwrap();
        assert_eq!((idle.committed, idle.applied), (0, 0), "{idle:?}");
    }
    assert!(b1_folder.path().exists());
}

async fn progress_is_reported_and_downloaded_files_match_the_index(server: TestServer) {
    use dooz_client::{ProgressEvent, SyncPhase};
    use std::sync::Mutex;
    let (mut a, mut b) = pair(&server).await;
    type Log = Arc<Mutex<Vec<ProgressEvent>>>;
    let record = |log: &Log| -> Arc<dyn dooz_client::Progress> {
        let log = Arc::clone(log);
        Arc::new(move |e: ProgressEvent| log.lock().unwrap().push(e))
    };
    let (log_a, log_b): (Log, Log) = Default::default();
    a.engine.set_progress(Some(record(&log_a)));
    b.engine.set_progress(Some(record(&log_b)));

    let data = pseudo_random(300_000, 5);
    a.write("dir/data.bin", &data);
    a.write("small.txt", b"small\n");
    let up = a.sync().await;
    let totals = |log: &Log, want: SyncPhase| -> (Vec<Option<u64>>, u64, usize) {
        let log = log.lock().unwrap();
        let mut begun = Vec::new();
        let mut done = 0;
        let mut finished = 0;
        for e in log.iter() {
            match *e {
                ProgressEvent::Begin { phase, total, .. } if phase == want => begun.push(total),
                ProgressEvent::Advance { phase, delta, .. } if phase == want => done += delta,
                ProgressEvent::Finish { phase, .. } if phase == want => finished += 1,
                _ => {}
            }
        }
        (begun, done, finished)
    };
    let bytes = data.len() as u64 + 6;
    assert_eq!(
        totals(&log_a, SyncPhase::Uploading),
        (vec![Some(bytes)], bytes, 1)
    );
    assert_eq!(
        totals(&log_a, SyncPhase::Committing),
        (vec![Some(up.committed)], up.committed, 1)
    );
    let (scans, scanned, scans_done) = totals(&log_a, SyncPhase::Scanning);
    assert!(scans.len() >= 2 && scans_done == scans.len() && scanned >= 3);
    assert_eq!(
        totals(&log_a, SyncPhase::Downloading).0.len(),
        0,
        "nothing to download"
    );

    let down = b.sync().await;
    assert_eq!(
        totals(&log_b, SyncPhase::Downloading),
        (vec![Some(bytes)], bytes, 1),
        "{down:?}"
    );
    let (_, pulled, _) = totals(&log_b, SyncPhase::Pulling);
    assert_eq!(pulled, up.committed);

    // What the download wrote matches the index exactly: a watcher told about these writes
    // finds nothing to scan, and nothing to upload.
    let written = [b.path("dir/data.bin"), b.path("small.txt"), b.path("dir")];
    assert!(!b.engine.local_paths_changed(&written).unwrap());
    assert!(
        !b.engine
            .local_paths_changed(&[b.path(".dooz-tmp-leftover"), b.path("never-there")])
            .unwrap()
    );
    assert_eq!(b.engine.upload().await.unwrap().committed, 0);
    assert!(!b.engine.pull_has_changes().await.unwrap());

    // Real local edits are seen.
    b.write("small.txt", b"edited\n");
    assert!(b.engine.local_paths_changed(&written).unwrap());
    b.write("new.txt", b"new\n");
    assert!(b.engine.local_paths_changed(&[b.path("new.txt")]).unwrap());
    b.sync().await;
    // (A file written just now stays "racily clean" until a later scan rehashes it, so only
    // the older download is known unchanged.)
    assert!(
        !b.engine
            .local_paths_changed(&[b.path("dir/data.bin")])
            .unwrap()
    );
    // A's next pull has something to apply.
    assert!(a.engine.pull_has_changes().await.unwrap());
}

// ---- sync through a failing backend ----

/// A folder of mixed content: many small files in nested directories, a few of MiBs, an
/// empty file and an empty directory.
fn write_mixed_folder(d: &Device) {
    for i in 0..240u64 {
        let len = (i as usize * 997) % 6000;
        d.write(
            &format!("docs/{:02}/sub{}/file-{i}.txt", i % 12, i % 3),
            &pseudo_random(len, 1000 + i),
        );
    }
    d.write("media/one.bin", &pseudo_random(1024 * 1024, 1));
    d.write(
        "media/nested/two.bin",
        &pseudo_random(3 * 1024 * 1024 + 123, 2),
    );
    d.write("media/three.bin", &pseudo_random(5 * 1024 * 1024 - 7, 3));
    d.write("empty", b"");
    fs::create_dir_all(d.path("empty-dir/inner")).unwrap();
}

/// Devices A and B sync through a server whose blob store fails 20% of all operations (put,
/// get, get_range, head, delete, list) at random, under the server's retries: every sync
/// completes (retried by the device while the error is retryable) and both trees end
/// byte-identical, both ways.
async fn a_sync_through_a_failing_backend_completes(backend: Backend) {
    let policy = RetryPolicy::default()
        .with_max_attempts(FAULT_TEST_ATTEMPTS)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(20));
    let server = TestServer::start_on(backend, Some(policy)).await;
    let (mut a, mut b) = pair(&server).await;
    let faults = server.faults.clone().unwrap();
    faults.set_fail_rate(None, 0.2).unwrap();

    write_mixed_folder(&a);
    let (up, up_retries) = a.sync_until_done().await;
    let (down, down_retries) = b.sync_until_done().await;
    assert_eq!(
        tree(a.folder.path()),
        tree(b.folder.path()),
        "{up:?} {down:?}"
    );
    assert!(tree(b.folder.path()).len() > 250);

    // An edit round back from B to A under the same faults.
    b.write("docs/03/sub0/file-3.txt", b"edited on beta\n");
    let mut big = b.read("media/nested/two.bin");
    big.splice(1000..1000, pseudo_random(40_000, 9));
    b.write("media/nested/two.bin", &big);
    fs::remove_file(b.path("media/one.bin")).unwrap();
    fs::rename(b.path("docs/05"), b.path("docs/renamed-05")).unwrap();
    for i in 0..40u64 {
        b.write(
            &format!("new/n-{i}.dat"),
            &pseudo_random(3000 + i as usize, 5000 + i),
        );
    }
    let (back_up, back_up_retries) = b.sync_until_done().await;
    let (back_down, back_down_retries) = a.sync_until_done().await;
    assert_eq!(
        tree(a.folder.path()),
        tree(b.folder.path()),
        "{back_up:?} {back_down:?}"
    );
    assert_eq!(a.read("media/nested/two.bin"), big);
    assert!(!a.path("media/one.bin").exists());

    // Quiet again: nothing left to do on either side.
    faults.set_fail_rate(None, 0.0).unwrap();
    for d in [&mut a, &mut b] {
        let idle = d.sync().await;
        assert_eq!((idle.committed, idle.applied), (0, 0), "{idle:?}");
    }
    let retries = server.retrying.as_ref().unwrap().retries();
    println!(
        "{backend:?}: {} faults injected, {retries} storage retries; device sync retries: \
         A up {up_retries}, B down {down_retries}, B up {back_up_retries}, A down \
         {back_down_retries}",
        faults.injected()
    );
    assert!(faults.injected() > 50, "faults were injected");
}

/// Attempts per storage call in the fault test: with 20% failures, a call fails for good
/// (and the device sees a retryable error) with probability 0.2^4 = 0.16%.
const FAULT_TEST_ATTEMPTS: u32 = 4;

mod faults {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_through_a_failing_local_dir_completes() {
        a_sync_through_a_failing_backend_completes(Backend::Local).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_through_a_failing_s3_bucket_completes() {
        a_sync_through_a_failing_backend_completes(Backend::S3).await;
    }
}

//! Several `dooz-server` processes sharing one PostgreSQL store (`DOOZ_TEST_POSTGRES`, a schema
//! per test) and one blob directory, with the same TLS identity (docs/SCALE-OUT.md):
//! - devices committing to one vault through both instances at once: seqs stay gap-free and
//!   every compare-and-swap conflict is reported;
//! - an instance SIGKILLed in the middle of a sync: its devices fail over, through a UDP load
//!   balancer, to the other instance, and content converges;
//! - a device revoked through the store is disconnected by the instance it is connected to;
//! - traffic metered by both instances adds up, in the shared store, to exactly what the
//!   devices counted themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dooz_client::{
    Connection, Connector, Engine, EngineOptions, Index, TrafficMeter, keyring_from_index,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, VaultId, VaultKey};
use dooz_protocol::{CommitEntry, CommitResult, EntryKey, Seq, VersionId};
use dooz_server::{AccountId, DeviceRegistration, MetaStore, PgStore};
use tempfile::TempDir;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn server_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_dooz")).with_file_name("dooz-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p dooz-server` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A deployment: a PostgreSQL schema, a blob directory, and server processes.
struct Cluster {
    url: String,
    store: Arc<PgStore>,
    blobs: TempDir,
    servers: Vec<ServerProc>,
    fingerprint: [u8; 32],
    account: AccountId,
}

struct ServerProc {
    child: Option<Child>,
    data_dir: TempDir,
    port: u16,
}

impl ServerProc {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Cluster {
    /// `n` instances on a fresh schema; the first makes the TLS identity, the others copy it.
    async fn start(n: usize) -> Self {
        let base = std::env::var("DOOZ_TEST_POSTGRES").expect(
            "DOOZ_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a \
             throwaway PostgreSQL",
        );
        let schema = format!("scale_{}", random_hex(8));
        // Migrates the schema before any server starts.
        let store = Arc::new(PgStore::connect_schema(&base, &schema, 8).await.unwrap());
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let blobs = tempfile::tempdir().unwrap();
        let mut cluster = Self {
            url,
            store,
            blobs,
            servers: Vec::new(),
            fingerprint: [0; 32],
            account: AccountId::new(0),
        };
        for i in 0..n {
            let data_dir = tempfile::tempdir().unwrap();
            if i > 0 {
                let first = cluster.servers[0].data_dir.path();
                for file in [
                    dooz_server::tls::SERVER_KEY_FILE,
                    dooz_server::tls::SERVER_CERT_FILE,
                ] {
                    fs::copy(first.join(file), data_dir.path().join(file)).unwrap();
                }
            }
            let mut server = ServerProc {
                child: None,
                data_dir,
                port: free_port(),
            };
            cluster.spawn(&mut server);
            cluster.servers.push(server);
        }
        let identity =
            dooz_server::tls::ServerIdentity::load_or_create(cluster.servers[0].data_dir.path())
                .unwrap();
        cluster.fingerprint = *blake3::hash(identity.cert_der()).as_bytes();
        let tenant = cluster
            .store
            .tenant_by_name("default")
            .await
            .unwrap()
            .unwrap();
        cluster.account = cluster
            .store
            .account_by_name(tenant.id, "default")
            .await
            .unwrap()
            .unwrap()
            .id;
        cluster
    }

    fn spawn(&self, server: &mut ServerProc) {
        let config = server.data_dir.path().join("config.json");
        fs::write(
            &config,
            serde_json::json!({ "blobs": self.blobs.path() }).to_string(),
        )
        .unwrap();
        let mut child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(server.data_dir.path())
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(server.addr().to_string())
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--metadata")
            .arg(&self.url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                other => panic!("dooz-server exited before listening: {other:?}"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        server.child = Some(child);
    }

    /// Enrols a new device straight in the store and returns its keys.
    async fn enrol(&self, name: &str) -> DeviceSecretKeys {
        let keys = DeviceSecretKeys::generate().unwrap();
        let token = self
            .store
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
        self.store
            .redeem_enrolment(token.expose(), registration, now())
            .await
            .unwrap();
        keys
    }
}

// ---------------------------------------------------------------------------------------------
// Many devices, one vault, both instances

/// What one device did: its attempts, and the results the server gave.
#[derive(Default)]
struct Tally {
    attempts: u64,
    applied: Vec<(Seq, EntryKey, VersionId, Option<VersionId>)>,
    conflicts: u64,
}

fn version_of(device: usize, round: usize, attempt: u64) -> VersionId {
    let h = blake3::hash(format!("{device} {round} {attempt}").as_bytes());
    VersionId::from_bytes(h.as_bytes()[..16].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_committing_through_both_instances_keep_seqs_gap_free_and_see_every_conflict() {
    const DEVICES: usize = 12;
    const ROUNDS: usize = 15;
    let cluster = Cluster::start(2).await;
    let vault = dooz_protocol::VaultId::from_bytes(VaultId::generate().unwrap().0);
    let shared = EntryKey::from_bytes([0x5a; 32]);

    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let keys = cluster.enrol(&format!("device {d}")).await;
        let addr = cluster.servers[d % 2].addr().to_string();
        let fingerprint = cluster.fingerprint;
        tasks.push(tokio::spawn(async move {
            let conn = Connection::connect(&addr, &fingerprint, &keys)
                .await
                .unwrap();
            conn.create_vault(vault).await.unwrap();
            let mut tally = Tally::default();
            let mut head: Option<VersionId> = None;
            for round in 0..ROUNDS {
                // Each commit: the device's own entry (never conflicts) and the shared entry
                // on the head the device knows; a conflict is retried on the head it reports.
                let own =
                    EntryKey::from_bytes(*blake3::hash(format!("own {d}").as_bytes()).as_bytes());
                let mut own_parent = tally.applied.iter().rev().find(|a| a.1 == own).map(|a| a.2);
                loop {
                    tally.attempts += 1;
                    let shared_version = version_of(d, round, tally.attempts);
                    let own_version = version_of(d + 1000, round, tally.attempts);
                    let entries = vec![
                        CommitEntry {
                            entry: own,
                            parent: own_parent,
                            version: own_version,
                            record: vec![d as u8; 40],
                            chunks: Vec::new(),
                            epoch: dooz_protocol::Epoch::new(1),
                        },
                        CommitEntry {
                            entry: shared,
                            parent: head,
                            version: shared_version,
                            record: vec![round as u8; 40],
                            chunks: Vec::new(),
                            epoch: dooz_protocol::Epoch::new(1),
                        },
                    ];
                    let parents = [own_parent, head];
                    let results = conn.commit(vault, entries).await.unwrap();
                    let mut shared_applied = false;
                    for (result, parent) in results.iter().zip(parents) {
                        match *result {
                            CommitResult::Applied {
                                entry,
                                seq,
                                version,
                            } => {
                                tally.applied.push((seq, entry, version, parent));
                                if entry == shared {
                                    head = Some(version);
                                    shared_applied = true;
                                } else {
                                    own_parent = Some(version);
                                }
                            }
                            CommitResult::Conflict {
                                entry,
                                head: theirs,
                            } => {
                                assert_eq!(entry, shared, "a device's own entry never conflicts");
                                tally.conflicts += 1;
                                head = theirs;
                            }
                        }
                    }
                    if shared_applied {
                        break;
                    }
                }
            }
            tally
        }));
    }
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await.unwrap());
    }

    // Every answer was applied or a conflict, on the shared entry.
    let attempts: u64 = tallies.iter().map(|t| t.attempts).sum();
    let conflicts: u64 = tallies.iter().map(|t| t.conflicts).sum();
    let applied: Vec<_> = tallies
        .iter()
        .flat_map(|t| t.applied.iter().copied())
        .collect();
    let applied_shared = applied.iter().filter(|a| a.1 == shared).count() as u64;
    assert_eq!(applied_shared, (DEVICES * ROUNDS) as u64);
    assert_eq!(applied_shared + conflicts, attempts);
    assert_eq!(applied.len() as u64, attempts + applied_shared);
    assert!(
        conflicts > 0,
        "the devices never raced: the test proves nothing"
    );

    // Both instances serve the same log: seqs 1..=n without a gap, exactly the applied
    // versions, each entry one chain.
    for server in &cluster.servers {
        let keys = cluster.enrol("reader").await;
        let conn = Connection::connect(&server.addr().to_string(), &cluster.fingerprint, &keys)
            .await
            .unwrap();
        let mut log = Vec::new();
        let mut since = Seq::ZERO;
        loop {
            let page = conn.pull(vault, since, 0).await.unwrap();
            log.extend(page.changes);
            since = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(log.len(), applied.len());
        for (i, change) in log.iter().enumerate() {
            assert_eq!(change.seq.get(), i as u64 + 1, "a gap in the log");
        }
        let by_seq: BTreeMap<Seq, _> = applied.iter().map(|a| (a.0, *a)).collect();
        assert_eq!(by_seq.len(), applied.len(), "a seq was handed out twice");
        let mut heads: HashMap<EntryKey, VersionId> = HashMap::new();
        for change in &log {
            let (_, entry, version, parent) = by_seq[&change.seq];
            assert_eq!(
                (change.entry, change.version, change.parent),
                (entry, version, parent)
            );
            assert_eq!(
                change.parent,
                heads.get(&change.entry).copied(),
                "a broken chain"
            );
            heads.insert(change.entry, change.version);
        }
        let parents: HashSet<_> = log
            .iter()
            .filter(|c| c.entry == shared)
            .map(|c| c.parent)
            .collect();
        assert_eq!(
            parents.len() as u64,
            applied_shared,
            "two versions on one parent"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Failover

/// A UDP load balancer: each client address is routed to a backend (new clients round-robin
/// over the live ones); a backend that refuses packets (its process is gone: ICMP port
/// unreachable) is marked down, and its clients move to a live one.
struct LoadBalancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LoadBalancer {
    async fn start(backends: Vec<SocketAddr>) -> Self {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let live = Arc::new(Mutex::new(vec![true; backends.len()]));
        let task = tokio::spawn(async move {
            let mut flows: HashMap<SocketAddr, tokio::sync::mpsc::UnboundedSender<Vec<u8>>> =
                HashMap::new();
            let mut next = 0usize;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                let packet = buf[..n].to_vec();
                let flow = flows.entry(client).or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let first = next;
                    next += 1;
                    tokio::spawn(flow(
                        Arc::clone(&front),
                        client,
                        backends.clone(),
                        Arc::clone(&live),
                        first,
                        rx,
                    ));
                    tx
                });
                let _ = flow.send(packet);
            }
        });
        Self { addr, task }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client's flow: packets from the client go to its backend, answers come back; on a
/// refusal the flow moves to the next live backend.
async fn flow(
    front: Arc<tokio::net::UdpSocket>,
    client: SocketAddr,
    backends: Vec<SocketAddr>,
    live: Arc<Mutex<Vec<bool>>>,
    first: usize,
    mut from_client: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let pick = |from: usize| -> Option<usize> {
        let live = live.lock().unwrap();
        (0..backends.len())
            .map(|i| (from + i) % backends.len())
            .find(|&i| live[i])
    };
    let Some(mut current) = pick(first) else {
        return;
    };
    let mut up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    up.connect(backends[current]).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            packet = from_client.recv() => {
                let Some(packet) = packet else { return };
                let _ = up.send(&packet).await;
            }
            answer = up.recv(&mut buf) => match answer {
                Ok(n) => {
                    let _ = front.send_to(&buf[..n], client).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    live.lock().unwrap()[current] = false;
                    let Some(next) = pick(current) else { return };
                    current = next;
                    up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    up.connect(backends[current]).await.unwrap();
                }
                Err(_) => {}
            },
        }
    }
}

struct Device {
    /// Its traffic, as it counted it.
    meter: Arc<TrafficMeter>,
    connector: Connector,
    folder: TempDir,
    _index_dir: TempDir,
    engine: Engine,
}

impl Device {
    async fn new(
        cluster: &Cluster,
        addr: SocketAddr,
        name: &str,
        vault: VaultId,
        key: [u8; 32],
    ) -> Self {
        let keys = cluster.enrol(name).await;
        let meter = Arc::new(TrafficMeter::tracking_uploads());
        let connector = Connector::new(
            addr.to_string(),
            cluster.fingerprint,
            DeviceSecretKeys::from_bytes(&keys.to_bytes()),
        )
        .with_traffic_meter(Arc::clone(&meter));
        let conn = connector.connect().await.unwrap();
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
        let engine =
            Engine::new(vault_index, keyring, conn, name, EngineOptions::default()).unwrap();
        Self {
            meter,
            connector,
            folder,
            _index_dir: index_dir,
            engine,
        }
    }

    /// Syncs until a sync succeeds, reconnecting when the connection was lost; returns the
    /// failed attempts.
    async fn sync_until_done(&mut self) -> u32 {
        let mut failed = 0;
        loop {
            if self.engine.connection().close_reason().is_some() {
                match self.connector.connect().await {
                    Ok(conn) => self.engine.set_connection(conn),
                    Err(e) if e.is_retryable() && failed < 50 => {
                        failed += 1;
                        continue;
                    }
                    Err(e) => panic!("could not reconnect after {failed} failures: {e}"),
                }
            }
            match self.engine.sync().await {
                Ok(_) => return failed,
                Err(e) if e.is_retryable() && failed < 50 => failed += 1,
                Err(e) => panic!("sync failed after {failed} retryable failures: {e}"),
            }
        }
    }
}

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_sync_fails_its_devices_over_and_content_converges() {
    let mut cluster = Cluster::start(2).await;
    let lb = LoadBalancer::start(cluster.servers.iter().map(ServerProc::addr).collect()).await;
    let vault = VaultId::generate().unwrap();
    let key = *VaultKey::generate().unwrap().expose_secret();
    // Through the balancer, the first device lands on instance 1, the second on instance 2.
    let mut a = Device::new(&cluster, lb.addr, "alpha", vault, key).await;
    let mut b = Device::new(&cluster, lb.addr, "beta", vault, key).await;
    for i in 0..8 {
        fs::write(
            a.folder.path().join(format!("big-{i}.bin")),
            pseudo_random(8 << 20, i),
        )
        .unwrap();
    }
    fs::write(b.folder.path().join("from-beta.txt"), b"beta was here\n").unwrap();

    // Alpha syncs on instance 1; once some of its upload is stored, instance 1 is SIGKILLed.
    let account = cluster.account;
    let store = Arc::clone(&cluster.store);
    let syncing = tokio::spawn(async move {
        let failed = a.sync_until_done().await;
        (a, failed)
    });
    loop {
        let usage = store.account_usage(account).await.unwrap();
        if usage.stored_bytes > 0 {
            break;
        }
        assert!(
            !syncing.is_finished(),
            "alpha's sync ended before anything was stored"
        );
        tokio::task::yield_now().await;
    }
    cluster.servers[0].kill();
    let (mut a, failed) = syncing.await.unwrap();
    assert!(failed > 0, "the kill did not interrupt alpha's sync");

    // Beta (on instance 2 all along) and alpha (moved there) converge.
    b.sync_until_done().await;
    a.sync_until_done().await;
    b.sync_until_done().await;
    let alpha = tree(a.folder.path());
    assert_eq!(alpha.len(), 9);
    assert_eq!(alpha, tree(b.folder.path()));
    assert_eq!(alpha["big-3.bin"], pseudo_random(8 << 20, 3));
    assert_eq!(alpha["from-beta.txt"], b"beta was here\n");
    drop(lb);
}

// ---------------------------------------------------------------------------------------------
// Revocation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_anywhere_is_disconnected_by_its_instance() {
    let cluster = Cluster::start(2).await;
    let keys = cluster.enrol("lost phone").await;
    let device = dooz_protocol::DeviceId::from_bytes(*keys.device_id().as_bytes());
    let vault = dooz_protocol::VaultId::from_bytes(VaultId::generate().unwrap().0);
    let conn = Connection::connect(
        &cluster.servers[1].addr().to_string(),
        &cluster.fingerprint,
        &keys,
    )
    .await
    .unwrap();
    conn.create_vault(vault).await.unwrap();
    let mut subscription = conn.subscribe(vec![vault]).await.unwrap();

    // Revoked through the store, as instance 1's control plane (or any other) does.
    cluster.store.revoke_device(device, now()).await.unwrap();

    // Instance 2 hears of it and closes the connection: the open subscription ends with the
    // revocation, and the device cannot come back.
    let ended = subscription.next().await;
    assert!(
        !matches!(ended, Ok(Some(_))),
        "the subscription went on: {ended:?}"
    );
    let reason = conn.close_reason().expect("the connection is closed");
    assert!(reason.to_string().contains("revoked"), "{reason}");
    let again = Connection::connect(
        &cluster.servers[1].addr().to_string(),
        &cluster.fingerprint,
        &keys,
    )
    .await;
    assert!(
        matches!(&again, Err(e) if e.to_string().contains("revoked")),
        "{:?}",
        again.err()
    );
}

// ---------------------------------------------------------------------------------------------
// Metering

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_metered_by_both_instances_adds_up_to_what_the_devices_counted() {
    let cluster = Cluster::start(2).await;
    let vault = VaultId::generate().unwrap();
    let key = *VaultKey::generate().unwrap().expose_secret();
    let mut a = Device::new(&cluster, cluster.servers[0].addr(), "alpha", vault, key).await;
    let mut b = Device::new(&cluster, cluster.servers[1].addr(), "beta", vault, key).await;
    for i in 0..6 {
        fs::write(
            a.folder.path().join(format!("a-{i}.bin")),
            pseudo_random(300_000 + i * 70_000, i as u64),
        )
        .unwrap();
    }
    fs::write(b.folder.path().join("b.txt"), b"from beta\n").unwrap();
    a.sync_until_done().await;
    b.sync_until_done().await;
    fs::write(a.folder.path().join("a-0.bin"), pseudo_random(90_000, 99)).unwrap();
    a.sync_until_done().await;
    b.sync_until_done().await;
    a.sync_until_done().await;
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));

    // Every answer was sent after its counts were durable, so the store holds them all now.
    type Key = (Vec<u8>, Vec<u8>);
    let mut stored: BTreeMap<Key, (u64, u64, u64)> = BTreeMap::new();
    for (k, c) in cluster
        .store
        .traffic(None, 0..u64::MAX / 3600)
        .await
        .unwrap()
    {
        let Some(device) = k.device else { continue };
        let e = stored
            .entry((
                device.as_bytes().to_vec(),
                k.vault.map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
            ))
            .or_default();
        e.0 += c.ingress_bytes;
        e.1 += c.egress_bytes;
        e.2 += c.requests;
    }
    let mut counted: BTreeMap<Key, (u64, u64, u64)> = BTreeMap::new();
    for d in [&a, &b] {
        let device = d.engine.connection().device();
        for (vault, t) in d.meter.snapshot() {
            if t.requests == 0 {
                continue;
            }
            counted.insert(
                (
                    device.as_bytes().to_vec(),
                    vault.map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
                ),
                (t.sent_bytes, t.received_bytes, t.requests),
            );
        }
    }
    assert_eq!(stored.len(), counted.len(), "{stored:?}\n{counted:?}");
    assert_eq!(
        stored, counted,
        "the shared counters against the devices' own counts"
    );
    // Both instances counted: each device talked to its own.
    let devices: HashSet<&Vec<u8>> = stored.keys().map(|k| &k.0).collect();
    assert_eq!(devices.len(), 2);
}

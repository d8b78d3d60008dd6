//! Metering end to end: a `dooz-server` process on loopback QUIC, devices syncing through the
//! client library with a [`TrafficMeter`] each, and the usage report read back with
//! `dooz-server usage` (through the running server's admin socket, or from the stopped data
//! dir). The report must equal what the devices counted, per device and vault, and survive
//! SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dooz_client::{
    Connection, Connector, Engine, EngineOptions, Index, Traffic, TrafficMeter, keyring_from_index,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, VaultId, VaultKey};
use dooz_protocol::EnrolmentCode;
use serde_json::Value;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(300);

fn server_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_dooz")).with_file_name("dooz-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p dooz-server` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A day ago, in unix seconds: where the reports start.
fn since() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now - 86_400).to_string()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `dooz-server` process on its own data dir and port.
struct ServerProc {
    child: Option<Child>,
    data_dir: TempDir,
    port: u16,
}

impl ServerProc {
    fn start() -> Self {
        let mut s = Self {
            child: None,
            data_dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--http-listen", "127.0.0.1:0"])
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
        self.child = Some(child);
    }

    /// SIGKILL: nothing gets to flush or clean up.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dooz-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn enrol_code(&self) -> EnrolmentCode {
        let out = self.cli(&["admin", "enrol-code", "--reusable"]);
        out.split_whitespace()
            .find(|w| w.starts_with("dooz1-"))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The usage report grouped by device and vault, as JSON rows.
    fn usage_json(&self) -> Vec<Value> {
        let from = since();
        let out = self.cli(&[
            "usage",
            "--from",
            &from,
            "--window",
            "month",
            "--group-by",
            "device,vault",
            "--format",
            "json",
        ]);
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    }

    fn usage_csv(&self) -> String {
        let from = since();
        self.cli(&[
            "usage",
            "--from",
            &from,
            "--window",
            "month",
            "--group-by",
            "device,vault",
            "--format",
            "csv",
        ])
    }

    fn blob_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        }
        walk(&self.data_dir.path().join("blobs"))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A device syncing one vault in-process, its traffic counted by its own meter.
struct Device {
    id: String,
    meter: Arc<TrafficMeter>,
    connector: Connector,
    folder: TempDir,
    _index: TempDir,
    engine: Engine,
}

impl Device {
    async fn new(code: &EnrolmentCode, name: &str, vault: VaultId, key: [u8; 32]) -> Self {
        let keys = DeviceSecretKeys::generate().unwrap();
        Connection::enrol(code, &keys, name).await.unwrap();
        let meter = Arc::new(TrafficMeter::tracking_uploads());
        let connector = Connector::new(code.address.clone(), code.fingerprint, keys)
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
        let options = EngineOptions {
            parallel_transfers: 8,
            ..EngineOptions::default()
        };
        let id = conn.device().to_hex();
        let engine = Engine::new(vault_index, keyring, conn, name, options).unwrap();
        Self {
            id,
            meter,
            connector,
            folder,
            _index: index_dir,
            engine,
        }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.folder.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// Syncs until a sync succeeds, reconnecting after lost connections.
    async fn sync(&mut self) {
        let mut failed = 0;
        loop {
            if self.engine.connection().close_reason().is_some() {
                match self.connector.connect().await {
                    Ok(conn) => self.engine.set_connection(conn),
                    Err(e) if e.is_retryable() && failed < 100 => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => panic!("could not reconnect: {e}"),
                }
            }
            match self.engine.sync().await {
                Ok(_) => return,
                Err(e) if e.is_retryable() && failed < 100 => failed += 1,
                Err(e) => panic!("sync failed after {failed} retryable failures: {e}"),
            }
        }
    }
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

/// What the report says per (device, vault): ingress, egress, requests.
type Counted = BTreeMap<(String, String), (u64, u64, u64)>;

fn report_traffic(rows: &[Value]) -> Counted {
    let mut out = Counted::new();
    for r in rows {
        let device = r["device"].as_str().unwrap().to_owned();
        if device.is_empty() {
            // Storage rows: no device owns stored bytes.
            assert_eq!(r["requests"], 0, "{r}");
            continue;
        }
        let e = out
            .entry((device, r["vault"].as_str().unwrap().to_owned()))
            .or_default();
        e.0 += r["ingress_bytes"].as_u64().unwrap();
        e.1 += r["egress_bytes"].as_u64().unwrap();
        e.2 += r["requests"].as_u64().unwrap();
    }
    out
}

fn client_traffic(devices: &[&Device]) -> BTreeMap<(String, String), Traffic> {
    let mut out = BTreeMap::new();
    for d in devices {
        for (vault, t) in d.meter.snapshot() {
            let vault = vault.map(|v| v.to_hex()).unwrap_or_default();
            out.insert((d.id.clone(), vault), t);
        }
    }
    out
}

/// Stored bytes of the report's storage rows (no device), per vault, in the last window.
fn report_storage(rows: &[Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in rows {
        if r["device"].as_str() == Some("") {
            out.insert(
                r["vault"].as_str().unwrap().to_owned(),
                r["stored_bytes_max"].as_u64().unwrap(),
            );
        }
    }
    out
}

/// Asserts the report equals the devices' own counts exactly.
fn assert_exact(server: &ServerProc, devices: &[&Device]) {
    let rows = server.usage_json();
    let reported = report_traffic(&rows);
    let counted = client_traffic(devices);
    let counted: Counted = counted
        .into_iter()
        .filter(|(_, t)| t.requests > 0)
        .map(|(k, t)| (k, (t.sent_bytes, t.received_bytes, t.requests)))
        .collect();
    assert_eq!(
        reported, counted,
        "server report vs the devices' own counts"
    );
}

/// The CSV rows equal the JSON rows, column for column.
fn assert_csv_matches_json(server: &ServerProc) {
    let rows = server.usage_json();
    let csv = server.usage_csv();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "window_start",
            "window_end",
            "tenant",
            "vault",
            "device",
            "ingress_bytes",
            "egress_bytes",
            "requests",
            "stored_bytes_max",
            "stored_byte_hours"
        ]
    );
    let csv_rows: Vec<&str> = lines.collect();
    assert_eq!(csv_rows.len(), rows.len());
    for (line, json) in csv_rows.iter().zip(&rows) {
        let cells: Vec<&str> = line.split(',').collect();
        for (name, cell) in header.iter().zip(cells) {
            let expected = match &json[*name] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(cell, expected, "column {name} of {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_report_equals_what_the_devices_counted() {
    let server = ServerProc::start();
    let code = server.enrol_code();
    let (v1, v2) = (VaultId::generate().unwrap(), VaultId::generate().unwrap());
    let (k1, k2) = (
        *VaultKey::generate().unwrap().expose_secret(),
        *VaultKey::generate().unwrap().expose_secret(),
    );
    let mut a = Device::new(&code, "alpha", v1, k1).await;
    let mut b = Device::new(&code, "beta", v1, k1).await;
    let mut c = Device::new(&code, "gamma", v2, k2).await;

    // A scripted workload: uploads, downloads, edits both ways, a second vault.
    for i in 0..6 {
        a.write(
            &format!("docs/{i}.bin"),
            &pseudo_random(300_000 + i * 7_001, i as u64),
        );
    }
    a.write("small.txt", b"hello");
    a.sync().await;
    b.sync().await;
    b.write("docs/0.bin", &pseudo_random(200_000, 99));
    b.write("from-b.txt", b"b was here");
    b.sync().await;
    a.sync().await;
    c.write("other/big.bin", &pseudo_random(2_000_000, 7));
    c.sync().await;
    a.sync().await;

    assert_exact(&server, &[&a, &b, &c]);
    assert_csv_matches_json(&server);
    // Each device's traffic is split between its vault and requests naming none (Hello,
    // ListVaults), and nothing is attributed to a vault the device does not use.
    let counted = client_traffic(&[&a, &b, &c]);
    let hex = |v: VaultId| dooz_protocol::VaultId::from_bytes(v.0).to_hex();
    assert!(counted.contains_key(&(a.id.clone(), hex(v1))));
    assert!(counted.contains_key(&(c.id.clone(), hex(v2))));
    assert!(!counted.contains_key(&(c.id.clone(), hex(v1))));

    // Storage: the gauge of each vault equals the sealed bytes of its chunks, read from the
    // stopped server's store.
    let rows = server.usage_json();
    let storage = report_storage(&rows);
    let mut server = server;
    server.kill();
    let stored = stored_bytes(server.data_dir.path()).await;
    assert_eq!(storage, stored);
    assert!(storage.values().all(|&b| b > 0));
    // The stopped data dir gives the same report.
    assert_exact(&server, &[&a, &b, &c]);
}

/// Sealed bytes of every chunk a vault's kept versions reference, per vault (hex).
async fn stored_bytes(data_dir: &Path) -> BTreeMap<String, u64> {
    use dooz_server::MetaStore as _;
    let store = dooz_server::SledStore::open(data_dir.join("meta")).unwrap();
    let mut out = BTreeMap::new();
    for vault in store.all_vaults().await.unwrap() {
        let chunks: Vec<_> = store
            .retained_chunks(vault.vault)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let records = store.chunks(vault.vault, &chunks).await.unwrap();
        let total = records.iter().flatten().map(|r| r.sealed_len).sum();
        out.insert(vault.vault.to_hex(), total);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_counts_what_was_stored_and_served_once() {
    let mut server = ServerProc::start();
    let code = server.enrol_code();
    let vault = VaultId::generate().unwrap();
    let key = *VaultKey::generate().unwrap().expose_secret();
    let mut a = Device::new(&code, "alpha", vault, key).await;
    let mut b = Device::new(&code, "beta", vault, key).await;

    // Part one, then SIGKILL with nothing in flight: every count made before is there after
    // the restart, exactly.
    for i in 0..4 {
        a.write(&format!("one/{i}.bin"), &pseudo_random(400_000, i));
    }
    a.sync().await;
    b.sync().await;
    server.kill();
    server.spawn();
    assert_exact(&server, &[&a, &b]);

    // Part two: SIGKILL in the middle of a large upload, restart, finish.
    for i in 0..24 {
        a.write(&format!("two/{i}.bin"), &pseudo_random(1_000_000, 100 + i));
    }
    let before = server.blob_bytes();
    let upload = async move {
        a.sync().await;
        a
    };
    let killer = async {
        let start = Instant::now();
        while server.blob_bytes() < before + 6_000_000 {
            assert!(start.elapsed() < DEADLINE, "the upload did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at_kill = server.blob_bytes() - before;
        server.kill();
        server.spawn();
        at_kill
    };
    let (a, at_kill) = tokio::join!(upload, killer);
    assert!(
        at_kill < 24_000_000,
        "the upload finished before the kill; make it bigger"
    );
    b.sync().await;

    // Uploads count with their chunk records: an upload acknowledged before the kill whose chunk
    // the crash lost (its pack not yet written) is not counted, and the device sends it again.
    // So the report equals what the devices counted, less those lost uploads, plus at most the
    // requests the kill cut off (answered by the server, never received by the device).
    let reported = report_traffic(&server.usage_json());
    let counted = client_traffic(&[&a, &b]);
    let mut lost_total = Traffic::default();
    let mut cut_off = 0;
    let mut over = (0u64, 0u64);
    for (key, t) in &counted {
        let device = if key.0 == a.id { &a } else { &b };
        let lost = device
            .meter
            .repeated_uploads()
            .into_iter()
            .find(|(v, _)| v.to_hex() == key.1)
            .map(|(_, t)| t)
            .unwrap_or_default();
        lost_total.sent_bytes += lost.sent_bytes;
        lost_total.requests += lost.requests;
        let &(ingress, egress, requests) = reported.get(key).unwrap_or(&(0, 0, 0));
        let want = (
            t.sent_bytes - lost.sent_bytes,
            t.received_bytes - lost.received_bytes,
            t.requests - lost.requests,
        );
        assert!(ingress >= want.0, "{key:?}: ingress {ingress} < {}", want.0);
        assert!(egress >= want.1, "{key:?}: egress {egress} < {}", want.1);
        assert!(
            requests >= want.2,
            "{key:?}: requests {requests} < {}",
            want.2
        );
        assert!(
            requests - want.2 <= t.unanswered,
            "{key:?}: {} more requests reported than answered, only {} went unanswered",
            requests - want.2,
            t.unanswered
        );
        assert!(
            ingress - want.0 <= t.unanswered_sent_bytes,
            "{key:?}: more ingress reported than the unanswered requests carried"
        );
        // An unanswered upload's answer is a `ChunkStored` or a short error.
        assert!(egress - want.1 <= t.unanswered * 1024, "{key:?}");
        cut_off += t.unanswered;
        over.0 += requests - want.2;
        over.1 += ingress - want.0;
    }
    for key in reported.keys() {
        assert!(counted.contains_key(key), "{key:?} reported, never counted");
    }
    eprintln!(
        "uploads lost by the kill and sent again: {} ({} B), not counted twice; requests cut \
         off: {cut_off}, of which counted by the server all the same: {} ({} B in)",
        lost_total.requests, lost_total.sent_bytes, over.0, over.1
    );

    // The files all arrived, and the stored bytes are exactly the chunks kept.
    let storage = report_storage(&server.usage_json());
    server.kill();
    assert_eq!(storage, stored_bytes(server.data_dir.path()).await);
    drop(b);
}

//! Test harness: an in-process `dooz-server` on loopback QUIC, enrolment codes, a UDP relay
//! that can cut a device off, and event helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dooz_sdk::{Client, ClientOptions, Event, EventStream};
use dooz_server::service::{Server, ServerParts, mint_enrolment_code};
use dooz_server::tls::ServerIdentity;
use dooz_server::transport::TransportTuning;
use dooz_server::{AccountId, MetaStore, SledStore};
use dooz_storage::LocalDir;
use tempfile::TempDir;
use tokio::net::UdpSocket;

/// How long a test waits for something that should happen before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct TestServer {
    server: Option<Server>,
    store: Arc<SledStore>,
    pub account: AccountId,
    listen: SocketAddr,
    dir: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        let store = Arc::new(SledStore::temporary().unwrap());
        let tenant = store.create_tenant("test").await.unwrap();
        let account = store.create_account(tenant, "ana").await.unwrap();
        let mut this = Self {
            server: None,
            store,
            account,
            listen: "127.0.0.1:0".parse().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        this.restart();
        this
    }

    /// Starts the server (again) on the same address, identity and data.
    pub fn restart(&mut self) {
        let parts = ServerParts {
            store: self.store.clone(),
            blobs: Arc::new(LocalDir::open(self.dir.path().join("blobs")).unwrap()),
            identity: ServerIdentity::load_or_create(self.dir.path()).unwrap(),
            listen: self.listen,
            tuning: TransportTuning::default(),
            limits: Default::default(),
            shutdown_grace: Duration::from_secs(1),
            policy: Arc::new(dooz_server::policy::Unlimited),
        };
        let server = Server::start(parts).unwrap();
        self.listen = server.local_addr();
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// An enrolment code for the account, naming `address` as the server's.
    pub async fn code_for(&self, address: SocketAddr) -> String {
        let server = self.server.as_ref().unwrap();
        mint_enrolment_code(
            server.store().as_ref(),
            self.account,
            &address.to_string(),
            server.fingerprint(),
            false,
            Duration::from_secs(600),
        )
        .await
        .unwrap()
        .to_string()
    }

    pub async fn code(&self) -> String {
        self.code_for(self.listen).await
    }
}

/// A client in a temp dir, enrolled with `code`.
pub async fn client(name: &str, code: &str, options: ClientOptions) -> (Client, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::open_with(dir.path().join("dooz"), options.device_name(name)).unwrap();
    client.enrol(code).await.unwrap();
    (client, dir)
}

/// A UDP relay in front of the server: a device enrolled through it can be cut off
/// ([`Relay::set_online`]) without touching the server or the other devices.
pub struct Relay {
    pub addr: SocketAddr,
    online: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let online = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(relay(front, server, Arc::clone(&online)));
        Self { addr, online, task }
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards datagrams between each client address and the server, one upstream socket per
/// client address, dropping everything while offline.
async fn relay(front: Arc<UdpSocket>, server: SocketAddr, online: Arc<AtomicBool>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        if !online.load(Ordering::SeqCst) {
            continue;
        }
        let up = match upstreams.get(&from) {
            Some(up) => Arc::clone(up),
            None => {
                let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                up.connect(server).await.unwrap();
                upstreams.insert(from, Arc::clone(&up));
                let (front, up2, online) =
                    (Arc::clone(&front), Arc::clone(&up), Arc::clone(&online));
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = up2.recv(&mut buf).await {
                        if online.load(Ordering::SeqCst) {
                            let _ = front.send_to(&buf[..n], from).await;
                        }
                    }
                }));
                up
            }
        };
        let _ = up.send(&buf[..n]).await;
    }
}

/// Events read from a stream so far.
pub struct Seen {
    pub stream: EventStream,
    pub events: Vec<Event>,
}

impl Seen {
    pub fn new(stream: EventStream) -> Self {
        Self {
            stream,
            events: Vec::new(),
        }
    }

    /// Reads events until `done(events so far)` holds; fails after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.events) {
            match tokio::time::timeout_at(deadline, self.stream.next_event()).await {
                Ok(Some(e)) => self.events.push(e),
                Ok(None) => panic!("event stream ended waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; events so far: {:#?}",
                    self.events
                ),
            }
        }
    }

    /// Takes every event the stream has ready, without waiting for more.
    pub async fn drain_ready(&mut self) {
        // `timeout` polls the stream once before looking at the (zero) deadline.
        while let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, self.stream.next_event()).await
        {
            self.events.push(e);
        }
    }

    /// Reads the stream to its end (once its client and vaults are dropped and background sync
    /// stopped, it ends).
    pub async fn drain_to_end(&mut self) {
        while let Ok(Some(e)) = tokio::time::timeout(PATIENCE, self.stream.next_event()).await {
            self.events.push(e);
        }
    }

    /// Keys of remote puts and deletes seen, with how many times each (key, version) came.
    pub fn remote_counts(&self) -> HashMap<(String, String), usize> {
        let mut out = HashMap::new();
        for e in &self.events {
            if let Event::Remote { key, change, .. } = e {
                *out.entry((key.clone(), format!("{change:?}"))).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn remote_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Remote { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        keys
    }
}

//! The `dooz` CLI end to end: an in-process `dooz-server` on loopback QUIC and real `dooz`
//! processes, each device with its own home (`--home`) and folder in temp dirs. Also the
//! library's enrolment ([`Connection::enrol`]) against the same server. Every test runs with
//! the server's blobs on a `LocalDir` (`local::`) and on an in-process S3 server (`s3::`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_client::{
    Connection, DeviceRecord, EnrolmentCode, Index, NetError, parse_server_fingerprint,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, VaultId, VaultKey};
use dooz_server::policy::{Access, AccountPolicy, Limit, Limits, PolicySource, Unlimited};
use dooz_server::service::{Server, ServerParts, mint_enrolment_code};
use dooz_server::tls::ServerIdentity;
use dooz_server::transport::TransportTuning;
use dooz_server::{AccountId, MetaStore, SledStore, StoreError, TenantId};
use dooz_storage::testing::S3Server;
use dooz_storage::{BlobStore, LocalDir, Retrying};
use tempfile::TempDir;

/// Where the server keeps its blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `LocalDir` in the server's temp dir.
    Local,
    /// A bucket on an in-process S3 server (s3s-fs), behind `Retrying` as `dooz-server` opens
    /// remote stores.
    S3,
}

struct TestServer {
    server: Option<Server>,
    store: Arc<SledStore>,
    account: AccountId,
    listen: SocketAddr,
    /// Where account policies come from (quotas, subscription access).
    policy: Arc<dyn PolicySource>,
    /// The TLS identity (so a restart keeps the fingerprint) and, on `LocalDir`, the blobs.
    dir: TempDir,
    /// The S3 server holding the blobs, on [`Backend::S3`]; it outlives restarts.
    s3: Option<S3Server>,
}

impl TestServer {
    async fn start(backend: Backend) -> Self {
        Self::start_with_policy(backend, Arc::new(Unlimited)).await
    }

    async fn start_with_policy(backend: Backend, policy: Arc<dyn PolicySource>) -> Self {
        let store = Arc::new(SledStore::temporary().unwrap());
        let tenant = store.create_tenant("test").await.unwrap();
        let account = store.create_account(tenant, "ana").await.unwrap();
        let s3 = match backend {
            Backend::Local => None,
            Backend::S3 => Some(S3Server::start().await.unwrap()),
        };
        let mut this = Self {
            server: None,
            store,
            account,
            listen: "127.0.0.1:0".parse().unwrap(),
            policy,
            dir: tempfile::tempdir().unwrap(),
            s3,
        };
        this.restart();
        this
    }

    /// Starts the server (again), on the same address and with the same identity and data.
    fn restart(&mut self) {
        let blobs: Arc<dyn BlobStore> = match &self.s3 {
            None => Arc::new(LocalDir::open(self.dir.path().join("blobs")).unwrap()),
            Some(s3) => Arc::new(Retrying::new(s3.config().open_bucket().unwrap())),
        };
        let parts = ServerParts {
            store: self.store.clone(),
            blobs,
            identity: ServerIdentity::load_or_create(self.dir.path()).unwrap(),
            listen: self.listen,
            tuning: TransportTuning::default(),
            limits: Default::default(),
            shutdown_grace: Duration::from_secs(1),
            policy: Arc::clone(&self.policy),
        };
        let server = Server::start(parts).unwrap();
        self.listen = server.local_addr();
        self.server = Some(server);
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn addr(&self) -> String {
        self.listen.to_string()
    }

    fn fingerprint(&self) -> [u8; 32] {
        parse_server_fingerprint(self.server().fingerprint()).unwrap()
    }

    /// A fresh enrolment code, as `dooz-server admin enrol-code` mints it.
    async fn code(&self, reusable: bool) -> EnrolmentCode {
        mint_enrolment_code(
            self.server().store().as_ref(),
            self.account,
            &self.addr(),
            self.server().fingerprint(),
            reusable,
            Duration::from_secs(600),
        )
        .await
        .unwrap()
    }
}

/// What one `dooz` run did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "dooz failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "dooz should have failed with {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Every stdout line as JSON.
    fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

/// Runs the real `dooz` binary with `--home home`, off the async runtime so the in-process
/// server keeps serving.
async fn dooz(home: &Path, args: &[&str]) -> Run {
    let home = home.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_dooz"))
            .arg("--home")
            .arg(&home)
            .args(&args)
            .env_remove("DOOZ_HOME")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Every file and directory under `root` (relative path, content or `None` for a dir, mode).
fn tree(root: &Path) -> Vec<(String, Option<Vec<u8>>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::metadata(&p).unwrap();
            if meta.is_dir() {
                out.push((rel, None, 0));
                walk(root, &p, out);
            } else {
                let mode = meta.permissions().mode() & 0o7777;
                out.push((rel, Some(fs::read(&p).unwrap()), mode));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Runs each named test (an `async fn(Backend)`) twice: `local::name` with the server's blobs
/// on a `LocalDir`, `s3::name` on a bucket of an in-process S3 server.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Local).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::S3).await;
                }
            )*
        }
    };
}

on_both_backends!(
    two_devices_sync_a_folder_through_the_cli,
    devices_that_are_not_enrolled_are_told_to_enrol,
    bad_enrolment_codes_get_clear_errors,
    the_library_enrols_and_then_connects,
    sync_waits_for_a_server_that_is_down,
    sync_watch_keeps_a_device_in_sync_both_ways,
    quotas_and_inactive_subscriptions_are_explained_and_lose_nothing,
    history_lists_versions_and_restore_brings_one_back,
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn two_devices_sync_a_folder_through_the_cli(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (dir.path().join("home-a"), dir.path().join("home-b"));
    let (folder_a, folder_b) = (dir.path().join("folder-a"), dir.path().join("folder-b"));

    // Enrol both devices with one reusable code.
    let code = server.code(true).await.to_string();
    let init = dooz(&home_a, &["--json", "init", "--name", "alpha"])
        .await
        .ok();
    assert_eq!(init.json()[0]["enrolled"], false);
    let enrolled = dooz(&home_a, &["--json", "enroll", &code]).await.ok();
    assert_eq!(enrolled.json()[0]["account"], "ana");
    assert_eq!(enrolled.json()[0]["device"], init.json()[0]["device"]);
    dooz(&home_b, &["enroll", &code, "--name", "beta"])
        .await
        .ok();
    // init is idempotent.
    let again = dooz(&home_a, &["--json", "init"]).await.ok();
    assert_eq!(again.json()[0]["device"], init.json()[0]["device"]);
    assert_eq!(again.json()[0]["enrolled"], true);

    write(&folder_a, "hello.txt", b"hello world\n");
    write(&folder_a, "empty", b"");
    write(&folder_a, "nested/deeper/data.bin", &[7u8; 100_000]);
    fs::set_permissions(
        folder_a.join("hello.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let folder_a_arg = folder_a.to_str().unwrap();
    let created = dooz(
        &home_a,
        &[
            "--json",
            "vault",
            "create",
            "docs",
            "--folder",
            folder_a_arg,
        ],
    )
    .await
    .ok();
    let vault_id = created.json()[0]["id"].as_str().unwrap().to_owned();

    // A's code brings the vault to B.
    let invite = dooz(&home_a, &["vault", "invite", "docs"]).await.ok();
    let vault_code = invite.stdout.trim();
    assert!(vault_code.starts_with("dooz-vault1-"), "{vault_code}");
    let folder_b_arg = folder_b.to_str().unwrap();
    let joined = dooz(
        &home_b,
        &[
            "--json",
            "vault",
            "join",
            vault_code,
            "--folder",
            folder_b_arg,
        ],
    )
    .await
    .ok();
    assert_eq!(joined.json()[0]["vault"], "docs", "B takes A's name");
    assert_eq!(joined.json()[0]["id"], vault_id.as_str());

    let up = dooz(&home_a, &["--json", "sync"]).await.ok();
    let report = &up.json()[0];
    assert_eq!(report["vault"], "docs");
    assert!(report["committed"].as_u64().unwrap() >= 4, "{report}");
    assert!(report["bytes_uploaded"].as_u64().unwrap() > 0, "{report}");
    for field in [
        "chunks_uploaded",
        "chunks_downloaded",
        "applied",
        "conflicts",
        "elapsed_ms",
    ] {
        assert!(report[field].is_u64(), "{field} in {report}");
    }
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0, "{report}");
    let down = dooz(&home_b, &["--json", "sync", "docs"]).await.ok();
    assert!(
        down.json()[0]["applied"].as_u64().unwrap() >= 4,
        "{}",
        down.stdout
    );
    assert_eq!(tree(&folder_a), tree(&folder_b));

    // And back: an edit and a delete on B reach A.
    write(&folder_b, "hello.txt", b"hello again\n");
    fs::remove_file(folder_b.join("empty")).unwrap();
    dooz(&home_b, &["sync"]).await.ok();
    dooz(&home_a, &["sync"]).await.ok();
    assert_eq!(tree(&folder_a), tree(&folder_b));
    assert_eq!(
        fs::read(folder_a.join("hello.txt")).unwrap(),
        b"hello again\n"
    );

    // Status and lists are JSON lines too.
    let status = dooz(&home_b, &["--json", "status"]).await.ok().json();
    assert_eq!(status[0]["enrolled"], true);
    assert_eq!(status[1]["vault"], "docs");
    assert_eq!(status[1]["pending_uploads"], 0);
    assert!(status[1]["cursor"].as_u64().unwrap() >= 5, "{}", status[1]);
    assert!(status[1]["last_sync"].as_u64().unwrap() > 0);
    let list = dooz(&home_a, &["--json", "vault", "list"])
        .await
        .ok()
        .json();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0]["folder"],
        folder_a.canonicalize().unwrap().to_str().unwrap()
    );

    // Unknown vault names list the known ones.
    let unknown = dooz(&home_a, &["sync", "photos"]).await.fails(1);
    assert!(
        unknown.stderr.contains("no vault named \"photos\"") && unknown.stderr.contains("docs"),
        "{}",
        unknown.stderr
    );
}

async fn devices_that_are_not_enrolled_are_told_to_enrol(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();

    // Nothing set up at all.
    let fresh = dir.path().join("fresh");
    let run = dooz(&fresh, &["sync"]).await.fails(1);
    assert!(run.stderr.contains("dooz enroll"), "{}", run.stderr);
    let run = dooz(&fresh, &["vault", "create", "docs"]).await.fails(1);
    assert!(run.stderr.contains("dooz enroll"), "{}", run.stderr);

    // A device that believes it is enrolled, but the server has never heard of it: the server
    // refuses it, and the message says to enrol.
    let home = dir.path().join("stranger");
    let folder = dir.path().join("folder");
    fs::create_dir_all(&folder).unwrap();
    {
        let index = Index::open(home.join("index")).unwrap();
        index
            .set_device(&DeviceRecord {
                server_addr: server.addr(),
                server_fingerprint: server.fingerprint(),
                device_name: "stranger".to_owned(),
                keys: DeviceSecretKeys::generate().unwrap(),
            })
            .unwrap();
        let vault = VaultId::generate().unwrap();
        index
            .put_vault_key(vault, Epoch::FIRST, &VaultKey::generate().unwrap())
            .unwrap();
        index.set_vault_name("docs", vault).unwrap();
        index.add_vault(vault, &folder).unwrap();
    }
    let run = dooz(&home, &["sync"]).await.fails(1);
    assert!(
        run.stderr.contains("not enrolled") && run.stderr.contains("dooz enroll"),
        "{}",
        run.stderr
    );
    let run = dooz(&home, &["vault", "create", "other"]).await.fails(1);
    assert!(run.stderr.contains("dooz enroll"), "{}", run.stderr);
}

async fn bad_enrolment_codes_get_clear_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");

    let run = dooz(&home, &["enroll", "hello"]).await.fails(1);
    assert!(
        run.stderr.contains("not a dooz enrolment code"),
        "{}",
        run.stderr
    );

    let good = server.code(false).await.to_string();
    let mut typo: Vec<char> = good.chars().collect();
    let i = typo.len() / 2;
    typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    let run = dooz(&home, &["enroll", &typo]).await.fails(1);
    assert!(run.stderr.contains("mistyped"), "{}", run.stderr);

    // A one-use code works once; the second device is told to ask for a new code.
    dooz(&home, &["enroll", &good]).await.ok();
    let other = dir.path().join("other");
    let run = dooz(&other, &["enroll", &good]).await.fails(1);
    assert!(
        run.stderr.contains("already used") && run.stderr.contains("new enrolment code"),
        "{}",
        run.stderr
    );

    // A code pinning another certificate is refused before anything is sent.
    let mut wrong_pin = server.code(false).await;
    wrong_pin.fingerprint = [0x55; 32];
    let run = dooz(&other, &["enroll", &wrong_pin.to_string()])
        .await
        .fails(1);
    assert!(run.stderr.contains("fingerprint"), "{}", run.stderr);

    // Usage errors exit with 2.
    dooz(&other, &["enroll"]).await.fails(2);
    dooz(&other, &["frobnicate"]).await.fails(2);
}

async fn the_library_enrols_and_then_connects(backend: Backend) {
    let server = TestServer::start(backend).await;
    let keys = DeviceSecretKeys::generate().unwrap();

    // Not enrolled yet: the sync connection is refused.
    let refused = Connection::connect(&server.addr(), &server.fingerprint(), &keys).await;
    assert!(
        matches!(refused, Err(NetError::NotEnrolled { .. })),
        "{refused:?}"
    );

    let code = server.code(true).await;
    let hello = Connection::enrol(&code, &keys, "laptop").await.unwrap();
    assert_eq!(hello.device.as_bytes(), keys.device_id().as_bytes());
    assert_eq!(
        (hello.tenant.as_str(), hello.account.as_str()),
        ("test", "ana")
    );
    // Enrolling again is fine while the device stands.
    Connection::enrol(&code, &keys, "laptop").await.unwrap();
    let conn = Connection::connect(&server.addr(), &server.fingerprint(), &keys)
        .await
        .unwrap();
    assert_eq!(conn.device(), hello.device);
    conn.close().await;

    // A token the server never issued.
    let mut bogus = code.clone();
    bogus.token = "et1_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
    let other = DeviceSecretKeys::generate().unwrap();
    let e = Connection::enrol(&bogus, &other, "phone")
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetError::EnrolmentRefused { .. })
            && e.to_string().contains("new enrolment code"),
        "{e}"
    );
    assert!(!e.is_retryable());

    // A revoked device may not enrol again.
    let device = dooz_protocol::DeviceId::from_bytes(*keys.device_id().as_bytes());
    server.store.revoke_device(device, now()).await.unwrap();
    let e = Connection::enrol(&code, &keys, "laptop").await.unwrap_err();
    assert!(matches!(e, NetError::Revoked { .. }), "{e}");

    // A pin that does not match the server's certificate.
    let mut wrong = code.clone();
    wrong.fingerprint = [1; 32];
    let e = Connection::enrol(&wrong, &other, "phone")
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::ServerCertMismatch { .. }), "{e}");
}

async fn sync_waits_for_a_server_that_is_down(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let folder = dir.path().join("folder");
    let code = server.code(false).await.to_string();
    dooz(&home, &["enroll", &code]).await.ok();
    write(&folder, "a.txt", b"written while the server is down\n");
    let folder_arg = folder.to_str().unwrap();
    dooz(&home, &["vault", "create", "docs", "--folder", folder_arg])
        .await
        .ok();

    server.stop().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dooz"))
        .arg("--home")
        .arg(&home)
        .args(["--json", "sync"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until dooz says it is retrying, then bring the server back.
    let stderr = child.stderr.take().unwrap();
    let (seen, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.contains("server unreachable, retrying");
            seen.push(line);
            if done {
                break;
            }
        }
        (seen, lines)
    })
    .await
    .unwrap();
    assert!(
        seen.last()
            .unwrap()
            .contains("server unreachable, retrying"),
        "{seen:?}"
    );
    server.restart();
    let (out, rest) = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        let rest: Vec<String> = rest.map(Result::unwrap).collect();
        (out, rest)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{seen:?} {rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("server unreachable")),
        "said once: {rest:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert!(report["committed"].as_u64().unwrap() >= 1, "{report}");
}

/// A spawned `dooz` that is killed if the test fails before it stops.
struct Spawned {
    child: Option<std::process::Child>,
    stdout: Option<std::thread::JoinHandle<Vec<String>>>,
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Spawned {
    fn start(home: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dooz"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("DOOZ_HOME")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                std::io::BufReader::new(r)
                    .lines()
                    .map(Result::unwrap)
                    .collect::<Vec<String>>()
            })
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        Self {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Sends Ctrl-C (SIGINT) and waits up to `within` for the process to exit; returns its
    /// exit code and output lines.
    async fn interrupt(mut self, within: Duration) -> (Option<i32>, Vec<String>, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = tokio::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if tokio::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("dooz did not stop within {within:?} of Ctrl-C");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code(), stdout, stderr)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it holds, failing the test after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sync_watch_keeps_a_device_in_sync_both_ways(backend: Backend) {
    const WITHIN: Duration = Duration::from_secs(60);
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (dir.path().join("home-a"), dir.path().join("home-b"));
    let (folder_a, folder_b) = (dir.path().join("folder-a"), dir.path().join("folder-b"));
    let code = server.code(true).await.to_string();
    dooz(&home_a, &["enroll", &code, "--name", "alpha"])
        .await
        .ok();
    dooz(&home_b, &["enroll", &code, "--name", "beta"])
        .await
        .ok();
    write(&folder_a, "first.txt", b"there before B watches\n");
    let folder_a_arg = folder_a.to_str().unwrap();
    dooz(
        &home_a,
        &["vault", "create", "docs", "--folder", folder_a_arg],
    )
    .await
    .ok();
    dooz(&home_a, &["sync"]).await.ok();
    let invite = dooz(&home_a, &["vault", "invite", "docs"]).await.ok();
    let folder_b_arg = folder_b.to_str().unwrap();
    dooz(
        &home_b,
        &[
            "vault",
            "join",
            invite.stdout.trim(),
            "--folder",
            folder_b_arg,
        ],
    )
    .await
    .ok();

    let watcher = Spawned::start(&home_b, &["--json", "sync", "--watch"]);
    // The start-up sync brings what A had.
    let first = folder_b.join("first.txt");
    eventually(WITHIN, "the start-up sync on B", async || {
        fs::read(&first).is_ok_and(|d| d == b"there before B watches\n")
    })
    .await;

    // What A syncs later reaches B's folder by itself.
    write(&folder_a, "from-a.txt", b"written on A\n");
    dooz(&home_a, &["sync"]).await.ok();
    let from_a = folder_b.join("from-a.txt");
    eventually(WITHIN, "A's file on B", async || {
        fs::read(&from_a).is_ok_and(|d| d == b"written on A\n")
    })
    .await;

    // A file written into B's folder while it watches reaches A.
    write(&folder_b, "from-b.txt", b"written on B\n");
    let from_b = folder_a.join("from-b.txt");
    eventually(WITHIN, "B's file on A", async || {
        dooz(&home_a, &["sync"]).await.ok();
        fs::read(&from_b).is_ok_and(|d| d == b"written on B\n")
    })
    .await;

    // Ctrl-C stops the watch cleanly; every stdout line is a sync report.
    let (code, stdout, stderr) = watcher.interrupt(WITHIN).await;
    assert_eq!(code, Some(0), "stdout: {stdout:?}\nstderr: {stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("stopping")), "{stderr:?}");
    let reports: Vec<serde_json::Value> = stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for r in &reports {
        assert_eq!(r["vault"], "docs", "{r}");
        for field in [
            "committed",
            "applied",
            "conflicts",
            "bytes_uploaded",
            "elapsed_ms",
        ] {
            assert!(r[field].is_u64(), "{field} in {r}");
        }
        assert!(r["trigger"].is_string(), "{r}");
    }
    assert_eq!(reports[0]["trigger"], "startup", "{stdout:?}");
    assert!(
        reports.iter().any(|r| r["applied"].as_u64() >= Some(1)),
        "B reported receiving: {stdout:?}"
    );
    assert!(
        reports.iter().any(|r| r["committed"].as_u64() >= Some(1)),
        "B reported sending: {stdout:?}"
    );
    assert_eq!(tree(&folder_a), tree(&folder_b));
}

/// A policy source whose one policy the test changes at will.
#[derive(Clone)]
struct TestPolicy(Arc<std::sync::Mutex<AccountPolicy>>);

impl TestPolicy {
    /// Sets the policy and makes the server see it at once.
    fn set(&self, server: &TestServer, policy: AccountPolicy) {
        *self.0.lock().unwrap() = policy;
        server.server().forget_cached_policies();
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

/// Bytes that do not compress or repeat (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

async fn quotas_and_inactive_subscriptions_are_explained_and_lose_nothing(backend: Backend) {
    let policy = TestPolicy(Arc::new(std::sync::Mutex::new(AccountPolicy::unlimited())));
    let server = TestServer::start_with_policy(backend, Arc::new(policy.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (dir.path().join("home-a"), dir.path().join("home-b"));
    let (folder_a, folder_b) = (dir.path().join("folder-a"), dir.path().join("folder-b"));
    let code = server.code(true).await.to_string();
    dooz(&home_a, &["enroll", &code, "--name", "alpha"])
        .await
        .ok();
    dooz(&home_b, &["enroll", &code, "--name", "beta"])
        .await
        .ok();
    write(&folder_a, "small.txt", b"small\n");
    dooz(
        &home_a,
        &[
            "vault",
            "create",
            "docs",
            "--folder",
            folder_a.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    dooz(&home_a, &["sync"]).await.ok();
    let invite = dooz(&home_a, &["vault", "invite", "docs"]).await.ok();
    dooz(
        &home_b,
        &[
            "vault",
            "join",
            invite.stdout.trim(),
            "--folder",
            folder_b.to_str().unwrap(),
        ],
    )
    .await
    .ok();

    // The storage quota is nearly full: a big file does not fit.
    let used = server
        .server()
        .store()
        .account_usage(server.account)
        .await
        .unwrap()
        .stored_bytes;
    let limits = |max| Limits {
        storage_bytes: Some(Limit::hard(max)),
        ..Limits::default()
    };
    policy.set(
        &server,
        AccountPolicy {
            access: Access::Full,
            limits: limits(used + 10_000),
        },
    );
    write(&folder_a, "big.bin", &noise(300_000, 7));
    let full = dooz(&home_a, &["sync"]).await.fails(1);
    assert!(
        full.stderr
            .contains("the account's storage quota is full: ")
            && full
                .stderr
                .contains("ask the operator to upgrade the plan or delete files"),
        "{}",
        full.stderr
    );
    // Said once, not retried for minutes.
    assert!(!full.stderr.contains("retrying"), "{}", full.stderr);
    let status = dooz(&home_a, &["--json", "status", "docs"])
        .await
        .ok()
        .json();
    assert!(
        status[1]["pending_uploads"].as_u64().unwrap() > 0,
        "the change waits: {}",
        status[1]
    );

    // A bigger plan: the same sync goes through, and the file reaches the other device.
    policy.set(
        &server,
        AccountPolicy {
            access: Access::Full,
            limits: limits(used + 10_000_000),
        },
    );
    dooz(&home_a, &["sync"]).await.ok();
    dooz(&home_b, &["sync"]).await.ok();
    assert_eq!(tree(&folder_a), tree(&folder_b));

    // Read-only: uploads are refused with a clear message, downloads still work.
    policy.set(
        &server,
        AccountPolicy {
            access: Access::ReadOnly,
            limits: Limits::default(),
        },
    );
    write(&folder_a, "later.txt", b"written while read-only\n");
    let refused = dooz(&home_a, &["sync"]).await.fails(1);
    assert!(
        refused
            .stderr
            .contains("subscription is not active: uploads are refused (downloads still work)"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("local changes are kept"),
        "{}",
        refused.stderr
    );
    dooz(&home_b, &["sync"]).await.ok();
    assert!(!folder_b.join("later.txt").exists());

    // Blocked: even connecting says why.
    policy.set(
        &server,
        AccountPolicy {
            access: Access::Blocked,
            limits: Limits::default(),
        },
    );
    let blocked = dooz(&home_b, &["sync"]).await.fails(1);
    assert!(
        blocked.stderr.contains("subscription is not active"),
        "{}",
        blocked.stderr
    );

    // Active again: the change made while read-only syncs.
    policy.set(&server, AccountPolicy::unlimited());
    dooz(&home_a, &["sync"]).await.ok();
    dooz(&home_b, &["sync"]).await.ok();
    assert_eq!(
        fs::read(folder_b.join("later.txt")).unwrap(),
        b"written while read-only\n"
    );

    // A full device plan refuses a third device, and says what to do.
    policy.set(
        &server,
        AccountPolicy {
            access: Access::Full,
            limits: Limits {
                devices: Some(Limit::hard(2)),
                ..Limits::default()
            },
        },
    );
    let third = dooz(
        &dir.path().join("home-c"),
        &["enroll", &code, "--name", "gamma"],
    )
    .await
    .fails(1);
    assert!(
        third
            .stderr
            .contains("the account has 2 of the 2 devices its plan allows: revoke a device"),
        "{}",
        third.stderr
    );
}

async fn history_lists_versions_and_restore_brings_one_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let folder = dir.path().join("folder");
    let code = server.code(false).await.to_string();
    dooz(&home, &["enroll", &code]).await.ok();
    write(&folder, "notes/doc.txt", b"first draft\n");
    dooz(
        &home,
        &[
            "vault",
            "create",
            "docs",
            "--folder",
            folder.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    dooz(&home, &["sync"]).await.ok();
    write(&folder, "notes/doc.txt", b"second draft, longer\n");
    dooz(&home, &["sync"]).await.ok();
    fs::remove_file(folder.join("notes/doc.txt")).unwrap();
    dooz(&home, &["sync"]).await.ok();

    let doc = folder.join("notes/doc.txt");
    let doc_arg = doc.to_str().unwrap();
    let listed = dooz(&home, &["--json", "history", doc_arg]).await.ok();
    let versions = listed.json()[0]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(versions[0]["deleted"], true);
    assert_eq!(versions[1]["size"], 21);
    assert_eq!(versions[2]["size"], 12);
    let first = versions[2]["version"].as_str().unwrap().to_owned();
    let deletion = versions[0]["version"].as_str().unwrap().to_owned();
    // Human output names every version and how to restore.
    let human = dooz(&home, &["history", doc_arg]).await.ok();
    assert!(human.stdout.contains(&first), "{}", human.stdout);
    assert!(human.stdout.contains("dooz restore"), "{}", human.stdout);

    // Bad requests each say what is wrong.
    let e = dooz(&home, &["restore", doc_arg, "--version", &deletion])
        .await
        .fails(1);
    assert!(e.stderr.contains("is its deletion"), "{}", e.stderr);
    let e = dooz(&home, &["restore", doc_arg, "--version", "xyz"])
        .await
        .fails(1);
    assert!(e.stderr.contains("not a version id"), "{}", e.stderr);
    let unknown = "00".repeat(16);
    let e = dooz(&home, &["restore", doc_arg, "--version", &unknown])
        .await
        .fails(1);
    assert!(e.stderr.contains("has no version"), "{}", e.stderr);
    let outside = dir.path().join("elsewhere.txt");
    let e = dooz(&home, &["history", outside.to_str().unwrap()])
        .await
        .fails(1);
    assert!(
        e.stderr.contains("not inside a folder bound"),
        "{}",
        e.stderr
    );

    // The first draft comes back, as a new version on top of the deletion.
    dooz(&home, &["restore", doc_arg, "--version", &first])
        .await
        .ok();
    assert_eq!(fs::read(&doc).unwrap(), b"first draft\n");
    let listed = dooz(&home, &["--json", "history", doc_arg]).await.ok();
    let versions = listed.json()[0]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 4, "{versions:?}");
    assert_eq!(versions[0]["deleted"], false);
    assert_eq!(versions[0]["size"], 12);
    // Nothing is left to sync: the restore was committed.
    let idle = dooz(&home, &["--json", "sync"]).await.ok();
    assert_eq!(idle.json()[0]["committed"], 0, "{:?}", idle.json());
}

/// `dooz pair invite` on `inviter` and `dooz pair join` on `joiner`, through the real binary:
/// the invite runs as a child whose first `--json` line is the code.
async fn pair_cli(inviter: &Path, joiner: &Path) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let inviter = inviter.to_owned();
    let (code, child) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dooz"))
            .arg("--home")
            .arg(&inviter)
            .args(["--json", "pair", "invite"])
            .env_remove("DOOZ_HOME")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
        let line: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(line["event"], "code", "{first}");
        let code = line["code"].as_str().unwrap().to_owned();
        let rest = std::thread::spawn(move || {
            let mut tail = String::new();
            std::io::Read::read_to_string(&mut out, &mut tail).unwrap();
            tail
        });
        (code, (child, rest))
    })
    .await
    .unwrap();
    let joined = dooz(joiner, &["--json", "pair", "join", &code]).await.ok();
    assert!(!joined.json().is_empty(), "{}", joined.stdout);
    let (mut child, rest) = child;
    let (status, tail) = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        (status, rest.join().unwrap())
    })
    .await
    .unwrap();
    assert!(status.success(), "pair invite failed: {tail}");
    assert!(tail.contains("\"paired\""), "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_makes_the_next_sync_rotate_the_key() {
    let server = TestServer::start(Backend::Local).await;
    let dir = tempfile::tempdir().unwrap();
    let home = |n: &str| dir.path().join(format!("home-{n}"));
    let folder = |n: &str| dir.path().join(format!("folder-{n}"));
    let code = server.code(true).await.to_string();
    for n in ["alpha", "beta", "gamma"] {
        dooz(&home(n), &["enroll", &code, "--name", n]).await.ok();
    }
    write(&folder("alpha"), "old.txt", b"before the revocation\n");
    let fa = folder("alpha");
    dooz(
        &home("alpha"),
        &["vault", "create", "docs", "--folder", fa.to_str().unwrap()],
    )
    .await
    .ok();
    dooz(&home("alpha"), &["sync"]).await.ok();
    // alpha pairs beta, then gamma; beta hears of gamma through alpha on its next sync.
    pair_cli(&home("alpha"), &home("beta")).await;
    pair_cli(&home("alpha"), &home("gamma")).await;
    for n in ["beta", "gamma"] {
        let f = folder(n);
        dooz(&home(n), &["add", "docs", f.to_str().unwrap()])
            .await
            .ok();
        dooz(&home(n), &["sync"]).await.ok();
        assert_eq!(
            fs::read(folder(n).join("old.txt")).unwrap(),
            b"before the revocation\n"
        );
    }

    // alpha is lost: revoked. gamma's next sync rotates the key, beta's takes it up.
    let alpha = server
        .store
        .list_devices(server.account)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "alpha")
        .unwrap();
    server
        .store
        .revoke_device(alpha.device, now())
        .await
        .unwrap();
    let rotated = dooz(&home("gamma"), &["sync"]).await.ok();
    assert!(
        rotated.stderr.contains("made a new key (epoch 1)"),
        "{}",
        rotated.stderr
    );
    write(&folder("beta"), "new.txt", b"after the rotation\n");
    let received = dooz(&home("beta"), &["sync"]).await.ok();
    assert!(
        received
            .stderr
            .contains("received the vault's new key (epoch 1)"),
        "{}",
        received.stderr
    );
    dooz(&home("gamma"), &["sync"]).await.ok();
    assert_eq!(
        fs::read(folder("gamma").join("new.txt")).unwrap(),
        b"after the rotation\n"
    );
    // What beta wrote after the rotation is sealed under epoch 1, which alpha never got.
    let vault = server.store.list_vaults(server.account).await.unwrap()[0].vault;
    let page = server
        .store
        .pull(vault, dooz_protocol::Seq::ZERO, 100)
        .await
        .unwrap();
    let new = page.changes.last().unwrap();
    assert_eq!(new.epoch.get(), 1);
    let to_alpha = server
        .store
        .envelopes_for(vault, alpha.device)
        .await
        .unwrap();
    assert!(
        to_alpha
            .iter()
            .all(|e| e.epoch.get() == 0 || e.epoch == dooz_protocol::ROSTER_EPOCH),
        "{to_alpha:?}"
    );
    // And alpha cannot sync at all.
    let refused = dooz(&home("alpha"), &["sync"]).await.fails(1);
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
}

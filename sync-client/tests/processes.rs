//! Crash and privacy tests with real processes: a `dooz-server` process with its own data dir
//! on loopback QUIC and `dooz` client processes with their own homes and folders. Processes
//! are killed with SIGKILL (`Child::kill`), so nothing gets a chance to clean up.
//!
//! The server binary is the workspace's `dooz-server`, built next to `dooz` by
//! `cargo test --workspace` (or `cargo build -p dooz-server`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a condition may take before a test gives up.
const DEADLINE: Duration = Duration::from_secs(300);

fn dooz_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dooz"))
}

fn server_bin() -> PathBuf {
    let path = dooz_bin().with_file_name("dooz-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p dooz-server` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Waits until `cond` holds, checking every few milliseconds, or panics after [`DEADLINE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free UDP port on 127.0.0.1 (the server binds it again right after).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct ServerProc {
    child: Option<Child>,
    data_dir: TempDir,
    port: u16,
}

impl ServerProc {
    fn start() -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            data_dir,
            port: free_port(),
        };
        server.spawn();
        server
    }

    /// Starts the server process on the data dir and port and waits until it listens.
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
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                other => panic!("dooz-server exited before listening: {other:?}"),
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn enrol_code(&self) -> String {
        let out = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["admin", "enrol-code", "--reusable"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        word_with_prefix(&stdout, "dooz1-")
    }

    fn blob_dir(&self) -> PathBuf {
        self.data_dir.path().join("blobs")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn word_with_prefix(text: &str, prefix: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}... in {text:?}"))
        .to_owned()
}

/// Every regular file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// Bytes of the finished blobs under `dir` (temp files of writes in progress excluded).
fn blob_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && !n.contains("tmp"))
        })
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

struct Device {
    home: TempDir,
    folder: TempDir,
}

impl Device {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            folder: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(dooz_bin());
        cmd.arg("--home")
            .arg(self.home.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "dooz {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn folder(&self) -> &str {
        self.folder.path().to_str().unwrap()
    }

    /// `dooz --json sync` and the sum of `bytes_uploaded` over its report lines.
    fn sync(&self) -> u64 {
        let out = self.run(&["--json", "sync"]);
        uploaded(&out.stdout)
    }

    fn spawn_sync(&self) -> Child {
        self.command(&["--json", "sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The sum of `bytes_uploaded` over the JSON lines of `dooz --json sync`.
fn uploaded(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let mut total = 0;
    let mut reports = 0;
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(n) = v.get("bytes_uploaded").and_then(serde_json::Value::as_u64) {
            total += n;
            reports += 1;
        }
    }
    assert!(reports > 0, "no sync report in {text:?}");
    total
}

/// Device A with a vault bound to its folder and device B joined to it, both enrolled.
fn two_devices(server: &ServerProc) -> (Device, Device) {
    let code = server.enrol_code();
    let a = Device::new();
    let b = Device::new();
    a.run(&["enroll", &code, "--name", "alpha"]);
    b.run(&["enroll", &code, "--name", "beta"]);
    a.run(&["vault", "create", "docs", "--folder", a.folder()]);
    let invite = a.run(&["vault", "invite", "docs"]);
    let vault_code = word_with_prefix(&String::from_utf8_lossy(&invite.stdout), "dooz-vault1-");
    b.run(&["vault", "join", &vault_code, "--folder", b.folder()]);
    (a, b)
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

/// Writes `files` random files of `size` bytes into `dir/big/`; returns their total size.
fn write_big_folder(dir: &Path, files: usize, size: usize) -> u64 {
    fs::create_dir_all(dir.join("big")).unwrap();
    for i in 0..files {
        fs::write(
            dir.join("big").join(format!("part-{i:03}.bin")),
            pseudo_random(size, i as u64),
        )
        .unwrap();
    }
    (files * size) as u64
}

/// Every file under `root` (relative path and content), sorted.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = files_under(root)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn kill_child(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_killed_client_resumes_without_resending_acknowledged_chunks() {
    let server = ServerProc::start();
    let (a, b) = two_devices(&server);
    let total = write_big_folder(a.folder.path(), 48, 2 * 1024 * 1024);

    // Kill the client once a part of the folder is on the server.
    let child = a.spawn_sync();
    wait_until("the first chunks to reach the server", || {
        blob_bytes(&server.blob_dir()) >= 4 * 1024 * 1024
    });
    kill_child(child);
    let stored_at_kill = blob_bytes(&server.blob_dir());
    assert!(
        stored_at_kill < total,
        "the upload finished before the client was killed; make the folder bigger"
    );

    // The restarted sync completes and sends only what the server did not have.
    let resent = a.sync();
    let stored = blob_bytes(&server.blob_dir());
    assert!(stored >= total, "{stored} < {total}");
    assert!(
        resent + stored_at_kill <= stored,
        "chunks stored before the kill were sent again: {resent} B uploaded after the restart, \
         {stored_at_kill} B stored at the kill, {stored} B stored in the end"
    );

    b.sync();
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));
}

#[test]
fn clients_ride_out_a_server_crash() {
    let mut server = ServerProc::start();
    let (a, b) = two_devices(&server);
    fs::write(a.folder.path().join("first.txt"), b"before the crash\n").unwrap();
    a.sync();
    write_big_folder(a.folder.path(), 32, 2 * 1024 * 1024);

    // SIGKILL the server in the middle of the upload, then start it again on the same
    // address and data dir. The client reconnects by itself and completes.
    let child = a.spawn_sync();
    wait_until("the upload to start", || {
        blob_bytes(&server.blob_dir()) >= 4 * 1024 * 1024
    });
    server.kill();
    server.spawn();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the client did not ride out the crash: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    b.sync();
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));
    // Both devices agree with the server afterwards: nothing more to send or fetch.
    assert_eq!(a.sync(), 0);
    assert_eq!(b.sync(), 0);
}

#[test]
fn the_server_data_dir_holds_no_plaintext_and_no_file_names() {
    let server = ServerProc::start();
    let (a, b) = two_devices(&server);
    let marker = "DOOZ-CONTENT-MARKER-5f1c2b";
    let names = ["quarterly-secret-plans.txt", "holiday-photos", "diary.md"];
    let text = format!("{marker}\n").repeat(2000);
    fs::write(a.folder.path().join(names[0]), &text).unwrap();
    fs::create_dir_all(a.folder.path().join(names[1])).unwrap();
    fs::write(a.folder.path().join(names[1]).join(names[2]), marker).unwrap();
    a.sync();
    b.sync();
    assert_eq!(tree(a.folder.path()), tree(b.folder.path()));

    let files = files_under(server.data_dir.path());
    assert!(!files.is_empty());
    let mut needles: Vec<&[u8]> = vec![marker.as_bytes()];
    needles.extend(names.iter().map(|n| n.as_bytes()));
    for file in &files {
        let bytes = fs::read(file).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == *needle),
                "{} contains {:?}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

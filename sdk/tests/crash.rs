//! A process killed (SIGKILL) while putting values loses no put that returned and leaves no
//! torn value: every key holds its last acknowledged value or a later one. The test runs
//! itself again as the child that gets killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};

use dooz_sdk::Client;

const CHILD: &str = "DOOZ_SDK_CRASH_CHILD";
const KEYS: u64 = 40;
/// Puts the parent waits to see acknowledged before killing the child.
const KILL_AFTER: u64 = 1500;

/// The value of put number `i`: its length and content depend on `i`.
fn value(i: u64) -> Vec<u8> {
    let len = usize::try_from((i * 7919) % 150_000).unwrap();
    let mut out = format!("put {i}:").into_bytes();
    out.extend((0..len).map(|j| (j as u64 ^ i) as u8));
    out
}

fn key(i: u64) -> String {
    format!("k/{}", i % KEYS)
}

/// The child: puts forever, printing each put's number once it returned.
async fn child(dir: &str) {
    let client = Client::open(dir).unwrap();
    let vault = match client.vault("v") {
        Ok(v) => v,
        Err(_) => client.create_vault("v").unwrap(),
    };
    for i in 0.. {
        vault.put(&key(i), value(i)).await.unwrap();
        println!("acked {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_no_acknowledged_put() {
    if let Some(dir) = std::env::var_os(CHILD) {
        child(dir.to_str().unwrap()).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dooz");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_killed_process_loses_no_acknowledged_put",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(proc.stdout.take().unwrap()).lines();
    let mut last = None;
    let mut note = |line: &str| {
        if let Some(n) = line.strip_prefix("acked ") {
            last = Some(n.parse::<u64>().unwrap());
        }
        last
    };
    for line in lines.by_ref() {
        if note(&line.unwrap()) >= Some(KILL_AFTER) {
            break;
        }
    }
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
    // What the child printed before it died is in the pipe still.
    for line in lines {
        note(&line.unwrap());
    }
    let last = last.expect("the child acknowledged puts");
    eprintln!("killed the child after {last} acknowledged puts");

    // A put cut short may leave its temporary file; opening the vault removes it.
    let temp_files = || -> usize {
        std::fs::read_dir(data.join("vaults"))
            .unwrap()
            .flat_map(|v| std::fs::read_dir(v.unwrap().path()).unwrap())
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".dooz-tmp-")
            })
            .count()
    };
    let left = temp_files();
    assert!(
        left <= 1,
        "{left} temporary files: at most the put in progress"
    );
    eprintln!("{left} temporary file(s) left by the kill");

    // Reopened: each key holds its last acknowledged value, or the one after it (a put that
    // finished as the kill came, before it was printed).
    let client = Client::open(&data).unwrap();
    let vault = client.vault("v").unwrap();
    for k in 0..KEYS {
        let acked = (0..=last).rev().find(|i| i % KEYS == k).unwrap();
        let got = vault.get(&key(k)).await.unwrap().unwrap();
        assert!(
            got == value(acked) || got == value(acked + KEYS),
            "{}: holds {:?}..., not put {acked} or the next",
            key(k),
            String::from_utf8_lossy(&got[..got.len().min(16)])
        );
    }
    assert_eq!(
        temp_files(),
        0,
        "opening the vault removed what the kill left"
    );
    assert_eq!(vault.list("").await.unwrap().len() as u64, KEYS);
}

//! Control-plane latency: drives a real `dooz-server` (release build, fresh data dir, rate
//! limiting off) over loopback HTTP at a fixed rate, open loop, and prints p50/p99/max per kind
//! of request and overall.
//!
//! ```text
//! cargo build --release -p dooz-server -p dooz-benches --bins
//! target/release/cp_latency [--rate 1000] [--secs 20]
//! ```
//!
//! Requests go round robin over four kinds: `GET .../accounts/{a}/devices` (an account made
//! through the API, no devices), `GET .../subscriptions/{s}`, `POST .../enrolment_tokens` with a fresh
//! `Idempotency-Key` (a write: the token is stored and flushed), and the same POST replaying
//! one key (the stored response is returned). Latency counts from the moment a request was
//! due, not when it was sent, so a stalled server is not hidden (no coordinated omission).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

const ADMIN: &str = "cp-latency-bench-admin-token-0123456789abcdef";
const KINDS: [&str; 4] = [
    "GET devices",
    "GET subscription",
    "POST new key",
    "POST replay",
];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("no parent directory")?
        .join("dooz-server");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p dooz-server -p dooz-benches --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 1000).max(1);
    let secs = arg("--secs", 20).max(1);
    let bin = server_bin()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"api_rate_limit_per_minute": 0}"#)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--http-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("DOOZ_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not start {}", bin.display()))?;
    let result = run(port, rate, secs).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn run(port: u16, rate: u64, secs: u64) -> anyhow::Result<()> {
    let api = Arc::new(Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://127.0.0.1:{port}/v1"),
    });
    // Wait for the server (a bench, not a test: polling is fine here).
    let started = Instant::now();
    loop {
        let up = api
            .client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the server did not answer /healthz within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use reqwest::Method;
    let t = api
        .call(
            Method::POST,
            "/tenants",
            ADMIN,
            Some(json!({"name": "bench"})),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let key = api
        .call(
            Method::POST,
            &format!("/tenants/{t}/api_keys"),
            ADMIN,
            Some(json!({"name": "bench", "scopes": ["admin", "devices"]})),
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("/tenants/{t}");
    let plan = api
        .call(
            Method::POST,
            &format!("{base}/plans"),
            &key,
            Some(json!({"name": "p"})),
        )
        .await["id"]
        .clone();
    let account = api
        .call(
            Method::POST,
            &format!("{base}/accounts"),
            &key,
            Some(json!({"name": "a"})),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let sub = api
        .call(
            Method::POST,
            &format!("{base}/subscriptions"),
            &key,
            Some(json!({"account": account, "plan": plan})),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let paths = Arc::new([
        format!("{base}/accounts/{account}/devices"),
        format!("{base}/subscriptions/{sub}"),
        format!("{base}/accounts/{account}/enrolment_tokens"),
    ]);
    let key = Arc::new(key);

    eprintln!("cp_latency: set up tenant {t}, account {account}, subscription {sub}; loading");
    let load_before = loadavg();
    let total = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Duration, bool)>();
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    for i in 0..total {
        let due = start + period * u32::try_from(i).unwrap();
        tokio::time::sleep_until(due).await;
        let (api, paths, key, tx) = (api.clone(), paths.clone(), key.clone(), tx.clone());
        let kind = usize::try_from(i % 4).unwrap();
        tokio::spawn(async move {
            let url = format!("{}{}", api.base, paths[kind.min(2)]);
            let req = match kind {
                0 | 1 => api.client.get(url),
                2 => api
                    .client
                    .post(url)
                    .header("Idempotency-Key", format!("new-{i}"))
                    .json(&json!({})),
                _ => api
                    .client
                    .post(url)
                    .header("Idempotency-Key", "replayed")
                    .json(&json!({})),
            };
            let resp = req.bearer_auth(key.as_str()).send().await;
            let ok = match resp {
                Ok(r) => {
                    let ok = r.status().is_success();
                    let _ = r.bytes().await;
                    ok
                }
                Err(_) => false,
            };
            let _ = tx.send((kind, due.elapsed(), ok));
        });
    }
    drop(tx);
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); KINDS.len()];
    let mut failed = 0u64;
    while let Some((kind, d, ok)) = rx.recv().await {
        if !ok {
            failed += 1;
        }
        lat[kind].push(d);
    }
    let wall = start.elapsed();
    let load_after = loadavg();

    println!(
        "cp_latency: {total} requests at {rate}/s over {secs} s (took {:.1} s), {failed} failed; \
         load average before {load_before}, after {load_after}",
        wall.as_secs_f64()
    );
    println!();
    println!("| requests | n | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let mut all: Vec<Duration> = Vec::new();
    for (kind, l) in lat.iter_mut().enumerate() {
        l.sort();
        all.extend_from_slice(l);
        println!(
            "| {} | {} | {} | {} | {} |",
            KINDS[kind],
            l.len(),
            ms(percentile(l, 50.0)),
            ms(percentile(l, 99.0)),
            ms(l.last().copied().unwrap_or_default())
        );
    }
    all.sort();
    println!(
        "| all | {} | {} | {} | {} |",
        all.len(),
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default())
    );
    Ok(())
}

//! The SDK's figures (issue "SDK"): local put/get latency and throughput for 1 KiB and 64 MiB
//! values against plain-file baselines measured in the same run, the latency from `put` on
//! device A to the change event on device B through a release `dooz-server` on loopback, and
//! the peak RSS of a 1 GiB streaming put synced to the server.
//!
//! Run (after `cargo build --release -p dooz-server -p dooz-client`):
//!
//! ```text
//! cargo run --release -p dooz-benches --bin sdk -- [--small 2000] [--large-runs 5]
//!     [--latency 300] [--big-gib 1] [--tmp-dir DIR] [--bin-dir DIR]
//! ```
//!
//! Baselines: a durable atomic write of a plain file (write, fsync, rename, fsync the
//! directory: the floor for a put that survives a crash), `std::fs::read` for gets, `memcpy`
//! for 64 MiB, and the round trip of one protocol request on the same server for the event
//! latency.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dooz_benches::e2e::procs::{Binaries, ServerProcess};
use dooz_sdk::{Client, ClientOptions, Event};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

struct Args {
    small: usize,
    large_runs: usize,
    latency: usize,
    big_gib: u64,
    tmp_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    /// `big`: only the 1 GiB part (run as a child process).
    part: Option<String>,
}

const USAGE: &str = "usage: sdk [--small 2000] [--large-runs 5] [--latency 300] [--big-gib 1] \
                     [--tmp-dir DIR] [--bin-dir DIR]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        small: 2000,
        large_runs: 5,
        latency: 300,
        big_gib: 1,
        tmp_dir: None,
        bin_dir: None,
        part: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--small" => args.small = value()?.parse()?,
            "--large-runs" => args.large_runs = value()?.parse()?,
            "--latency" => args.latency = value()?.parse()?,
            "--big-gib" => args.big_gib = value()?.parse()?,
            "--tmp-dir" => args.tmp_dir = Some(value()?.into()),
            "--bin-dir" => args.bin_dir = Some(value()?.into()),
            "--part" => args.part = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if args.small == 0 || args.large_runs == 0 || args.latency == 0 {
        bail!("counts must be at least 1; {USAGE}");
    }
    Ok(args)
}

/// The `p`-th percentile (0–100) of `values`, nearest rank.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// The plain-file floor of a durable put: temp file, write, fsync, rename, fsync the dir.
fn durable_write(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!(".tmp-{name}"));
    let mut f = std::fs::File::create(&temp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    dooz_benches::random_bytes(len, seed)
}

async fn local(args: &Args, tmp: &Path) -> anyhow::Result<()> {
    let client = Client::open(tmp.join("local-client"))?;
    let vault = client.create_vault("bench")?;
    let plain = tmp.join("plain");
    std::fs::create_dir_all(&plain)?;

    // 1 KiB.
    let value = data(KIB, 1);
    let n = args.small;
    let (mut sdk_put, mut base_put, mut sdk_get, mut base_get) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let key = format!("k/{:05}", i % 1000);
        let t = Instant::now();
        vault.put(&key, &value).await?;
        sdk_put.push(t.elapsed());
        let t = Instant::now();
        durable_write(&plain, &format!("{:05}", i % 1000), &value)?;
        base_put.push(t.elapsed());
    }
    for i in 0..n {
        let key = format!("k/{:05}", i % 1000);
        let t = Instant::now();
        let got = vault.get(&key).await?;
        sdk_get.push(t.elapsed());
        let t = Instant::now();
        let plain_got = std::fs::read(plain.join(format!("{:05}", i % 1000)))?;
        base_get.push(t.elapsed());
        if got.as_deref() != Some(&value[..]) || plain_got != value {
            bail!("a 1 KiB value did not read back");
        }
    }
    println!(
        "\n1 KiB values, {n} operations each (latency p50 / p99, and operations per second at p50):"
    );
    for (what, sdk, base) in [
        ("put (durable)", &sdk_put, &base_put),
        ("get", &sdk_get, &base_get),
    ] {
        let (p50, p99, b50, b99) = (
            percentile(sdk, 50.0),
            percentile(sdk, 99.0),
            percentile(base, 50.0),
            percentile(base, 99.0),
        );
        println!(
            "  {what:14} SDK {:8.1} / {:8.1} µs ({:7.0}/s)   plain file {:8.1} / {:8.1} µs   SDK ÷ plain (p50) {:.2}×",
            us(p50),
            us(p99),
            1.0 / p50.as_secs_f64(),
            us(b50),
            us(b99),
            p50.as_secs_f64() / b50.as_secs_f64()
        );
    }

    // 64 MiB.
    let big = data(64 * MIB, 2);
    let mut rows: Vec<(&str, Vec<Duration>, Vec<Duration>)> = vec![
        ("put (bytes)", Vec::new(), Vec::new()),
        ("put_reader", Vec::new(), Vec::new()),
        ("get (bytes)", Vec::new(), Vec::new()),
        ("reader", Vec::new(), Vec::new()),
    ];
    let mut memcpy = Vec::new();
    let mut copy = vec![0u8; big.len()];
    for run in 0..args.large_runs {
        let key = format!("big/{run}");
        let t = Instant::now();
        vault.put(&key, &big).await?;
        rows[0].1.push(t.elapsed());
        let t = Instant::now();
        durable_write(&plain, &format!("big{run}"), &big)?;
        rows[0].2.push(t.elapsed());

        let t = Instant::now();
        vault.put_reader(&format!("{key}-stream"), &big[..]).await?;
        rows[1].1.push(t.elapsed());
        let plain_put = rows[0].2[run];
        rows[1].2.push(plain_put);

        let t = Instant::now();
        let got = vault.get(&key).await?;
        rows[2].1.push(t.elapsed());
        let t = Instant::now();
        let plain_got = std::fs::read(plain.join(format!("big{run}")))?;
        rows[2].2.push(t.elapsed());
        if got.as_deref() != Some(&big[..]) || plain_got != big {
            bail!("a 64 MiB value did not read back");
        }

        let t = Instant::now();
        let mut reader = vault
            .reader(&format!("{key}-stream"))
            .await?
            .context("the streamed value is missing")?;
        let mut buf = vec![0u8; MIB];
        let mut total = 0;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        rows[3].1.push(t.elapsed());
        let plain_get = rows[2].2[run];
        rows[3].2.push(plain_get);
        if total != big.len() {
            bail!("the streamed value read back short");
        }

        let t = Instant::now();
        copy.copy_from_slice(&big);
        memcpy.push(t.elapsed());
        std::hint::black_box(&copy);
    }
    let mem = percentile(&memcpy, 50.0);
    println!(
        "\n64 MiB values, {} runs (medians; memcpy {:.0} MB/s):",
        args.large_runs,
        mbps(big.len(), mem)
    );
    for (what, sdk, base) in &rows {
        let (s, b) = (percentile(sdk, 50.0), percentile(base, 50.0));
        println!(
            "  {what:12} SDK {:7.1} ms {:7.0} MB/s   plain file {:7.1} ms {:7.0} MB/s   SDK ÷ plain {:.2}×   ÷ memcpy {:.3}",
            ms(s),
            mbps(big.len(), s),
            ms(b),
            mbps(big.len(), b),
            mbps(big.len(), s) / mbps(big.len(), b),
            mbps(big.len(), s) / mbps(big.len(), mem),
        );
    }
    Ok(())
}

/// `len` pseudo-random bytes made as they are read.
struct Generated {
    state: u64,
    left: u64,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize / 8 * 8;
        let mut out = vec![0u8; n];
        for word in out.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes());
        }
        self.left -= n as u64;
        buf.put_slice(&out);
        std::task::Poll::Ready(Ok(()))
    }
}

fn own_peak_rss() -> Option<u64> {
    dooz_benches::e2e::procs::peak_rss_of(std::process::id())
}

async fn networked(args: &Args, tmp: &Path) -> anyhow::Result<()> {
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let data_dir = tmp.join("server");
    std::fs::create_dir_all(&data_dir)?;
    let mut server = ServerProcess::start(&bins.server, &data_dir, &tmp.join("server.log"))?;
    let code = server.enrol_code()?;
    let a = Client::open_with(
        tmp.join("a"),
        ClientOptions::default().device_name("bench A"),
    )?;
    let b = Client::open_with(
        tmp.join("b"),
        ClientOptions::default().device_name("bench B"),
    )?;
    a.enrol(&code).await?;
    b.enrol(&code).await?;
    let va = a.create_vault("bench")?;
    va.sync().await?;
    let invite = a.pair_invite().await?;
    let pairing = invite.code().to_owned();
    let (paired, joined) = tokio::join!(invite.complete(), b.pair_join(&pairing));
    paired?;
    joined?;
    let vb = b.vault("bench")?;
    vb.sync().await?;

    // Baseline: one protocol request's round trip (history of a missing key: one request).
    let mut rtt = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        vb.history("no-such-key").await?;
        rtt.push(t.elapsed());
    }

    // Where the latency goes: one device's sync that sends a 1 KiB put, and the other's that
    // receives it, timed apart (no background sync yet).
    let value = data(KIB, 4);
    let (mut send, mut receive) = (Vec::new(), Vec::new());
    for i in 0..50 {
        va.put(&format!("split/{i}"), &value).await?;
        let t = Instant::now();
        va.sync().await?;
        send.push(t.elapsed());
        let t = Instant::now();
        vb.sync().await?;
        receive.push(t.elapsed());
    }

    let mut events = vb.watch();
    let sync_a = a.start_sync()?;
    let sync_b = b.start_sync()?;
    // Let both settle (their start-up syncs), then measure one put at a time.
    va.put("warm-up", b"x").await?;
    wait_for(&mut events, "warm-up").await?;
    let value = data(KIB, 3);
    let mut lat = Vec::new();
    for i in 0..args.latency {
        let key = format!("lat/{i:05}");
        let t = Instant::now();
        va.put(&key, &value).await?;
        wait_for(&mut events, &key).await?;
        lat.push(t.elapsed());
    }
    println!(
        "\nput on A → change event on B, {} puts of 1 KiB through dooz-server on loopback:",
        args.latency
    );
    println!(
        "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (one request's round trip: p50 {:.2} ms; target p50 < 50 ms)",
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0)),
        ms(percentile(&lat, 100.0)),
        ms(percentile(&rtt, 50.0)),
    );
    println!(
        "  breakdown, 50 syncs each: sending device's sync p50 {:.1} ms, receiving device's sync p50 {:.1} ms",
        ms(percentile(&send, 50.0)),
        ms(percentile(&receive, 50.0)),
    );
    sync_a.stop().await?;
    sync_b.stop().await?;

    server.stop()?;
    Ok(())
}

/// The 1 GiB streaming put and its sync, in a process of its own (`--part big`) so that the
/// peak RSS is this work's alone.
async fn big(args: &Args, tmp: &Path) -> anyhow::Result<()> {
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let data_dir = tmp.join("big-server");
    std::fs::create_dir_all(&data_dir)?;
    let mut server = ServerProcess::start(&bins.server, &data_dir, &tmp.join("big-server.log"))?;
    let code = server.enrol_code()?;
    let a = Client::open(tmp.join("big-client"))?;
    a.enrol(&code).await?;
    let va = a.create_vault("big")?;
    {
        let size = args.big_gib << 30;
        let t = Instant::now();
        va.put_reader(
            "big.img",
            Generated {
                state: 0x9e37_79b9_7f4a_7c15,
                left: size,
            },
        )
        .await?;
        let put = t.elapsed();
        let t = Instant::now();
        let report = va.sync().await?;
        let synced = t.elapsed();
        println!(
            "\n{} GiB streaming put, then synced to the server ({} chunks sent):",
            args.big_gib, report.chunks_uploaded
        );
        println!(
            "  put {:.1} s ({:.0} MB/s), sync {:.1} s ({:.0} MB/s); peak RSS of the process {} MiB (target < 256 MiB)",
            put.as_secs_f64(),
            size as f64 / put.as_secs_f64() / 1e6,
            synced.as_secs_f64(),
            size as f64 / synced.as_secs_f64() / 1e6,
            own_peak_rss().unwrap_or(0) >> 20,
        );
    }
    server.stop()?;
    Ok(())
}

async fn wait_for(events: &mut dooz_sdk::EventStream, key: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.next_event()).await {
            Ok(Some(Event::Remote { key: k, .. })) if k == key => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the event stream ended"),
            Err(_) => bail!("no event for {key} within 30 s"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = match &args.tmp_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    if args.part.as_deref() == Some("big") {
        return big(&args, tmp.path()).await;
    }
    println!("dooz-sdk benchmark (temp dir {})", tmp.path().display());
    local(&args, tmp.path()).await?;
    networked(&args, tmp.path()).await?;
    if args.big_gib > 0 {
        // Its own process, for a clean peak RSS.
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["--part", "big", "--big-gib", &args.big_gib.to_string()]);
        if let Some(dir) = &args.tmp_dir {
            cmd.arg("--tmp-dir").arg(dir);
        }
        if let Some(dir) = &args.bin_dir {
            cmd.arg("--bin-dir").arg(dir);
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!("the 1 GiB part failed: {status}");
        }
    }
    Ok(())
}

//! Memory per connected idle device (issue "Scale-out"): N devices each keep a QUIC connection
//! to one release `dooz-server` with a `Subscribe` stream open, as background sync does, and
//! the server's resident memory is read as they arrive and after they sit idle. Target: 10,000
//! devices on one 2-core instance in at most 1 GiB.
//!
//! Run (after `cargo build --release -p dooz-server -p dooz-client`):
//!
//! ```text
//! cargo run --release -p dooz-benches --bin idle -- [--devices 10000] [--idle-secs 15]
//!     [--parallel 32] [--tmp-dir DIR] [--bin-dir DIR] [--metadata postgres://...]
//! ```
//!
//! The devices live in this process (one QUIC endpoint each, as on separate machines); the
//! figure is the server process's RSS (`VmRSS`), minus its RSS before the first device.
//! After the idle period (keep-alives only) every connection must still be open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dooz_benches::e2e::procs::{Binaries, ServerProcess, rss_of};
use dooz_client::{Connection, EnrolmentCode, Subscription, parse_server_fingerprint};
use dooz_crypto::DeviceSecretKeys;

struct Args {
    devices: usize,
    idle_secs: u64,
    parallel: usize,
    tmp_dir: Option<std::path::PathBuf>,
    bin_dir: Option<std::path::PathBuf>,
    /// `--metadata` for the server (a PostgreSQL URL); sled by default.
    metadata: Option<String>,
}

const USAGE: &str = "usage: idle [--devices 10000] [--idle-secs 15] [--parallel 32] \
                     [--tmp-dir DIR] [--bin-dir DIR] [--metadata postgres://...]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        devices: 10_000,
        idle_secs: 15,
        parallel: 32,
        tmp_dir: None,
        bin_dir: None,
        metadata: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--devices" => args.devices = value()?.parse()?,
            "--idle-secs" => args.idle_secs = value()?.parse()?,
            "--parallel" => args.parallel = value()?.parse()?,
            "--tmp-dir" => args.tmp_dir = Some(value()?.into()),
            "--bin-dir" => args.bin_dir = Some(value()?.into()),
            "--metadata" => args.metadata = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if args.devices == 0 || args.parallel == 0 {
        bail!("--devices and --parallel must be at least 1; {USAGE}");
    }
    Ok(args)
}

/// One idle device: its connection and its open subscription.
struct Device {
    conn: Connection,
    sub: Subscription,
}

async fn device(
    code: &EnrolmentCode,
    addr: &str,
    fingerprint: &[u8; 32],
    vault: dooz_protocol::VaultId,
    n: usize,
) -> anyhow::Result<Device> {
    let keys = DeviceSecretKeys::generate()?;
    Connection::enrol(code, &keys, &format!("idle {n}"))
        .await
        .context("enrol")?;
    let conn = Connection::connect(addr, fingerprint, &keys)
        .await
        .context("connect")?;
    conn.create_vault(vault).await.context("create the vault")?;
    let sub = conn.subscribe(vec![vault]).await.context("subscribe")?;
    Ok(Device { conn, sub })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = match &args.tmp_dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let data = tmp.path().join("server");
    std::fs::create_dir_all(&data)?;
    // PostgreSQL metadata wants the blob store named (the one instances share).
    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({ "blobs": tmp.path().join("blobs") }).to_string(),
    )?;
    let extra: Vec<&std::ffi::OsStr> = match &args.metadata {
        Some(url) => vec![
            "--metadata".as_ref(),
            url.as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        None => Vec::new(),
    };
    let server =
        ServerProcess::start_with(&bins.server, &data, &tmp.path().join("server.log"), &extra)?;
    let pid = server.pid().context("the server has no pid")?;
    let code: EnrolmentCode = server
        .enrol_code()?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = server.banner.addr.to_string();
    let fingerprint = parse_server_fingerprint(&server.banner.fingerprint)
        .context("the server printed no fingerprint")?;
    let vault = dooz_protocol::VaultId::from_bytes(*dooz_crypto::VaultId::generate()?.as_bytes());
    let base = rss_of(pid).context("cannot read the server's RSS")?;
    println!(
        "dooz-server pid {pid}: {} MiB before any device; {} devices, {} at a time",
        base >> 20,
        args.devices,
        args.parallel
    );

    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut tasks = tokio::task::JoinSet::new();
    let mut devices = Vec::with_capacity(args.devices);
    let step = (args.devices / 10).max(1);
    let report = |devices: &Vec<Device>| {
        if devices.len().is_multiple_of(step) || devices.len() == args.devices {
            let rss = rss_of(pid).unwrap_or(0);
            println!(
                "  {:6} connected  server RSS {:5} MiB  ({:.1} KiB per device)  {:.0} s",
                devices.len(),
                rss >> 20,
                rss.saturating_sub(base) as f64 / 1024.0 / devices.len() as f64,
                started.elapsed().as_secs_f64()
            );
        }
    };
    for n in 0..args.devices {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        while let Some(joined) = tasks.try_join_next() {
            devices.push(joined??);
            report(&devices);
        }
        let (code, addr) = (code.clone(), addr.clone());
        tasks.spawn(async move {
            let d = device(&code, &addr, &fingerprint, vault, n).await;
            drop(permit);
            d
        });
    }
    while let Some(joined) = tasks.join_next().await {
        devices.push(joined??);
        report(&devices);
    }

    // Idle: keep-alives only.
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let open = devices
        .iter()
        .filter(|d| d.conn.close_reason().is_none())
        .count();
    let rss = rss_of(pid).unwrap_or(0);
    println!(
        "after {} s idle: {open} of {} connections open; server RSS {} MiB ({:.1} KiB per device; target 10,000 devices in ≤ 1 GiB)",
        args.idle_secs,
        devices.len(),
        rss >> 20,
        rss.saturating_sub(base) as f64 / 1024.0 / devices.len() as f64,
    );
    if open != devices.len() {
        bail!("{} connections closed while idle", devices.len() - open);
    }

    // Every subscription is live: closing its connection ends it.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for d in devices {
        set.spawn(async move {
            let Device { conn, mut sub } = d;
            conn.close().await;
            tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .is_ok()
        });
    }
    let mut ended = 0usize;
    while let Some(r) = set.join_next().await {
        if r? {
            ended += 1;
        }
    }
    println!(
        "closed every device in {:.1} s ({ended} subscriptions ended)",
        t.elapsed().as_secs_f64()
    );
    drop(server);
    Ok(())
}

//! Scale-out figures (issue "Scale-out", docs/SCALE-OUT.md):
//! - **commit throughput** of the metadata store, sled against PostgreSQL, in entries/s:
//!   `--committers` tasks commit batches of entries (each naming a recorded chunk) straight
//!   through `MetaStore::commit`, each on its own vault and then all on one vault;
//! - **aggregate sync throughput** with one and with two release `dooz-server` instances:
//!   `--devices` devices each upload `--mib` MiB of fresh data at once (sled with one instance,
//!   PostgreSQL with one and with two sharing the database and a blob directory);
//! - **revocation latency across instances**: a device subscribed on instance 2 is revoked
//!   through the database; the time until its connection is closed.
//!
//! PostgreSQL must be durable for the comparison to be fair (sled flushes every commit):
//!
//! ```text
//! eval "$(DOOZ_PG_DURABLE=1 bash scripts/postgres.sh start)"
//! cargo build --release -p dooz-server -p dooz-client -p dooz-benches
//! target/release/scaleout --postgres "$DOOZ_TEST_POSTGRES" [--runs 3] [--committers 8]
//!     [--devices 4] [--mib 64] [--tmp-dir DIR] [--bin-dir DIR]
//! bash scripts/postgres.sh stop "$DOOZ_PG_DIR"
//! ```
//!
//! Every figure is the median of `--runs` runs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dooz_benches::e2e::procs::{Binaries, ServerProcess};
use dooz_client::{
    Connection, Engine, EngineOptions, EnrolmentCode, Index, keyring_from_index,
    parse_server_fingerprint,
};
use dooz_crypto::{DeviceSecretKeys, Epoch, VaultId, VaultKey};
use dooz_protocol::{ChunkId, CommitEntry, DeviceId, EntryKey, VersionId};
use dooz_server::{MetaStore, PgStore, SledStore};

struct Args {
    postgres: String,
    runs: usize,
    committers: usize,
    devices: usize,
    mib: usize,
    tmp_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: scaleout --postgres URL [--runs 3] [--committers 8] [--devices 4] \
                     [--mib 64] [--tmp-dir DIR] [--bin-dir DIR]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        postgres: String::new(),
        runs: 3,
        committers: 8,
        devices: 4,
        mib: 64,
        tmp_dir: None,
        bin_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--postgres" => args.postgres = value()?,
            "--runs" => args.runs = value()?.parse()?,
            "--committers" => args.committers = value()?.parse()?,
            "--devices" => args.devices = value()?.parse()?,
            "--mib" => args.mib = value()?.parse()?,
            "--tmp-dir" => args.tmp_dir = Some(value()?.into()),
            "--bin-dir" => args.bin_dir = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if args.postgres.is_empty() {
        bail!("--postgres is required; {USAGE}");
    }
    if args.runs == 0 || args.committers == 0 || args.devices < 2 || args.mib == 0 {
        bail!("--runs, --committers and --mib must be at least 1, --devices at least 2; {USAGE}");
    }
    Ok(args)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    random_fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fills `out` with random bytes (a keyed BLAKE3 stream under a fresh random key).
fn random_fill(out: &mut [u8]) -> anyhow::Result<()> {
    let key = VaultKey::generate()?;
    blake3::Hasher::new_keyed(key.expose_secret())
        .finalize_xof()
        .fill(out);
    Ok(())
}

fn bytes_id<const N: usize>(tag: &str) -> [u8; N] {
    let mut out = [0u8; N];
    blake3::Hasher::new()
        .update(tag.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Commit throughput

/// Entries/s of `committers` tasks each committing `commits` batches of `batch` new entries;
/// on one shared vault when `shared`.
async fn commit_rate(
    store: Arc<dyn MetaStore>,
    committers: usize,
    batch: usize,
    commits: usize,
    shared: bool,
) -> anyhow::Result<f64> {
    let tag = random_hex(8)?;
    let tenant = store.create_tenant(&format!("bench {tag}")).await?;
    let account = store.create_account(tenant, "bench").await?;
    let shared_vault = dooz_protocol::VaultId::from_bytes(bytes_id(&format!("{tag} shared")));
    let device = DeviceId::from_bytes(bytes_id("bench device"));
    let mut prepared = Vec::new();
    for c in 0..committers {
        let vault = if shared {
            shared_vault
        } else {
            dooz_protocol::VaultId::from_bytes(bytes_id(&format!("{tag} vault {c}")))
        };
        store.create_vault(account, vault, now()).await?;
        let chunk = ChunkId::from_bytes(bytes_id(&format!("{tag} chunk {c}")));
        store
            .record_chunk(vault, chunk, 4096, bytes_id("sealed"), now())
            .await?;
        prepared.push((vault, chunk));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, (vault, chunk)) in prepared.into_iter().enumerate() {
        let store = Arc::clone(&store);
        let tag = tag.clone();
        tasks.spawn(async move {
            for n in 0..commits {
                let entries = (0..batch)
                    .map(|i| CommitEntry {
                        entry: EntryKey::from_bytes(bytes_id(&format!("{tag} {c} {n} {i}"))),
                        parent: None,
                        version: VersionId::from_bytes(bytes_id(&format!("{tag} v {c} {n} {i}"))),
                        record: vec![0x42; 120],
                        chunks: vec![chunk],
                        epoch: dooz_protocol::Epoch::new(1),
                    })
                    .collect();
                store.commit(vault, device, entries, now()).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((committers * batch * commits) as f64 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Servers and devices

/// Release `dooz-server` instances on one metadata store and blob directory.
struct Deployment {
    servers: Vec<ServerProcess>,
    _dirs: tempfile::TempDir,
}

impl Deployment {
    /// `instances` servers; `metadata` is a PostgreSQL URL (then the blob directory and the
    /// TLS identity are shared) or `None` for sled (one instance).
    fn start(
        bins: &Binaries,
        tmp: &Path,
        metadata: Option<&str>,
        instances: usize,
    ) -> anyhow::Result<Self> {
        let dirs = tempfile::tempdir_in(tmp)?;
        let blobs = dirs.path().join("blobs");
        std::fs::create_dir_all(&blobs)?;
        let config = dirs.path().join("config.json");
        std::fs::write(&config, serde_json::json!({ "blobs": blobs }).to_string())?;
        let mut servers: Vec<ServerProcess> = Vec::new();
        for i in 0..instances {
            let data = dirs.path().join(format!("server-{i}"));
            std::fs::create_dir_all(&data)?;
            if !servers.is_empty() {
                for file in [
                    dooz_server::tls::SERVER_KEY_FILE,
                    dooz_server::tls::SERVER_CERT_FILE,
                ] {
                    std::fs::copy(dirs.path().join("server-0").join(file), data.join(file))?;
                }
            }
            let mut extra: Vec<&OsStr> = vec!["--config".as_ref(), config.as_os_str()];
            if let Some(url) = metadata {
                extra.push(OsStr::new("--metadata"));
                extra.push(OsStr::new(url));
            }
            servers.push(ServerProcess::start_with(
                &bins.server,
                &data,
                &dirs.path().join(format!("server-{i}.log")),
                &extra,
            )?);
        }
        Ok(Self {
            servers,
            _dirs: dirs,
        })
    }
}

/// Enrols a device on `server` and connects it.
async fn enrolled(
    server: &ServerProcess,
    name: &str,
) -> anyhow::Result<(Connection, DeviceSecretKeys)> {
    let code: EnrolmentCode = server
        .enrol_code()?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = DeviceSecretKeys::generate()?;
    Connection::enrol(&code, &keys, name)
        .await
        .context("enrol")?;
    let fingerprint = parse_server_fingerprint(&server.banner.fingerprint)
        .context("the server printed no fingerprint")?;
    let conn = Connection::connect(&server.banner.addr.to_string(), &fingerprint, &keys)
        .await
        .context("connect")?;
    Ok((conn, keys))
}

/// Aggregate MiB/s of `devices` devices (spread over the instances) each uploading `mib` MiB.
async fn sync_rate(
    deployment: &Deployment,
    tmp: &Path,
    devices: usize,
    mib: usize,
) -> anyhow::Result<f64> {
    let mut engines = Vec::new();
    let mut dirs = Vec::new();
    for d in 0..devices {
        let server = &deployment.servers[d % deployment.servers.len()];
        let (conn, _keys) = enrolled(server, &format!("device {d}")).await?;
        let vault = VaultId::generate()?;
        conn.create_vault(dooz_protocol::VaultId::from_bytes(vault.0))
            .await?;
        let folder = tempfile::tempdir_in(tmp)?;
        let index_dir = tempfile::tempdir_in(tmp)?;
        let index = Index::open(index_dir.path())?;
        let vault_index = index.add_vault(vault, folder.path())?;
        index.put_vault_key(vault, Epoch(1), &VaultKey::generate()?)?;
        let keyring = keyring_from_index(&index, vault)?;
        // Fresh data per device: nothing dedups across devices or runs.
        let mut data = vec![0u8; 8 << 20];
        for f in 0..mib.div_ceil(8) {
            random_fill(&mut data)?;
            std::fs::write(folder.path().join(format!("file-{f}.bin")), &data)?;
        }
        let engine = Engine::new(
            vault_index,
            keyring,
            conn,
            format!("device {d}"),
            EngineOptions::default(),
        )?;
        engines.push(engine);
        dirs.push((folder, index_dir));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut engine in engines {
        tasks.spawn(async move { engine.sync().await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((devices * mib.div_ceil(8) * 8) as f64 / secs)
}

/// Milliseconds from revoking (through the database) a device subscribed on instance 2 to its
/// connection closing.
async fn revocation_ms(deployment: &Deployment, store: &PgStore) -> anyhow::Result<f64> {
    let server = &deployment.servers[1];
    let (conn, keys) = enrolled(server, "to revoke").await?;
    let vault = dooz_protocol::VaultId::from_bytes(VaultId::generate()?.0);
    conn.create_vault(vault).await?;
    let mut sub = conn.subscribe(vec![vault]).await?;
    let device = DeviceId::from_bytes(*keys.device_id().as_bytes());
    let started = Instant::now();
    store.revoke_device(device, now()).await?;
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Ok(Some(_))) => bail!("the revoked device's subscription went on"),
        Ok(_) => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Err(_) => bail!("the revoked device was not disconnected within 10 s"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = match &args.tmp_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    if let Some(warning) = bins.staleness_warning() {
        eprintln!("warning: {warning}");
    }

    println!(
        "## Commit throughput (entries/s, median of {} runs)",
        args.runs
    );
    println!("| store | vaults | entries per commit | entries/s | PostgreSQL / sled |");
    println!("|---|---|---|---|---|");
    for shared in [false, true] {
        for (batch, commits) in [(1usize, 150usize), (100, 15)] {
            let mut rates = [Vec::new(), Vec::new()];
            for _ in 0..args.runs {
                let sled_dir = tempfile::tempdir_in(&tmp)?;
                let sled: Arc<dyn MetaStore> = Arc::new(SledStore::open(sled_dir.path())?);
                rates[0].push(commit_rate(sled, args.committers, batch, commits, shared).await?);
                let schema = format!("bench_{}", random_hex(6)?);
                let pg: Arc<dyn MetaStore> =
                    Arc::new(PgStore::connect_schema(&args.postgres, &schema, 16).await?);
                rates[1].push(commit_rate(pg, args.committers, batch, commits, shared).await?);
            }
            let (sled, pg) = (median(rates[0].clone()), median(rates[1].clone()));
            let vaults = if shared {
                "1 shared".to_owned()
            } else {
                format!("{} (one each)", args.committers)
            };
            println!("| sled | {vaults} | {batch} | {sled:.0} | |");
            println!(
                "| PostgreSQL | {vaults} | {batch} | {pg:.0} | {:.2}× |",
                pg / sled
            );
        }
    }

    println!();
    println!(
        "## Aggregate sync throughput ({} devices × {} MiB, MiB/s, median of {} runs)",
        args.devices, args.mib, args.runs
    );
    println!("| metadata | instances | MiB/s | vs PostgreSQL × 1 |");
    println!("|---|---|---|---|");
    let mut figures = Vec::new();
    for (label, pg, instances) in [
        ("sled", false, 1usize),
        ("PostgreSQL", true, 1),
        ("PostgreSQL", true, 2),
    ] {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let url = if pg {
                let schema = format!("bench_{}", random_hex(6)?);
                let url = format!("{}?options=-c%20search_path%3D{schema}", args.postgres);
                Some((schema, url))
            } else {
                None
            };
            if let Some((schema, _)) = &url {
                PgStore::connect_schema(&args.postgres, schema, 2).await?;
            }
            let deployment = Deployment::start(
                &bins,
                &tmp,
                url.as_ref().map(|(_, u)| u.as_str()),
                instances,
            )?;
            rates.push(sync_rate(&deployment, &tmp, args.devices, args.mib).await?);
        }
        figures.push((label, instances, median(rates)));
    }
    let base = figures.get(1).map_or(1.0, |f| f.2);
    for (label, instances, rate) in &figures {
        println!(
            "| {label} | {instances} | {rate:.0} | {:.2}× |",
            rate / base
        );
    }

    println!();
    println!("## Revocation reaching the other instance (ms)");
    let schema = format!("bench_{}", random_hex(6)?);
    let store = PgStore::connect_schema(&args.postgres, &schema, 4).await?;
    let url = format!("{}?options=-c%20search_path%3D{schema}", args.postgres);
    let deployment = Deployment::start(&bins, &tmp, Some(&url), 2)?;
    let mut latencies = Vec::new();
    for _ in 0..(args.runs * 7).max(20) {
        latencies.push(revocation_ms(&deployment, &store).await?);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "median {:.1} ms, max {:.1} ms over {} revocations (target ≤ 1000 ms)",
        median(latencies.clone()),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
    Ok(())
}

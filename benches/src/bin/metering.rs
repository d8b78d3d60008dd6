//! What metering costs: end-to-end initial sync (device A uploads a generated folder, device B
//! downloads it) through a release `dooz-server` with metering on and with it off
//! (`{"metering": false}` in its config), alternating in the same run.
//!
//! Run (after `cargo build --release -p dooz-server -p dooz-client`):
//!
//! ```text
//! cargo run --release -p dooz-benches --bin metering -- [--size-mib 256] [--runs 5]
//!     [--seed 1] [--no-fsync] [--tmp-dir DIR] [--bin-dir DIR]
//! ```
//!
//! `--no-fsync` turns `metering_fsync` off on the metered server (counts synced every 50 ms
//! instead of before each answer).
//! Each run measures both modes, in alternating order (on first in even runs, off first in odd
//! ones) so that a machine getting slower or faster does not favour one. Output: per run and
//! mode the sync time; then the medians, the overhead (median on / median off − 1) and the
//! target (≤ 2%), and the server's metered figures of the last run with metering on.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dooz_benches::e2e::dataset::{self, DatasetSpec};
use dooz_benches::e2e::median;
use dooz_benches::e2e::procs::{Binaries, Client, ServerProcess};
use dooz_benches::e2e::tree::{compare_trees, copy_tree};

const MIB: u64 = 1024 * 1024;
const VAULT: &str = "bench";
const MAX_ROUNDS: usize = 5;
const TARGET_OVERHEAD: f64 = 0.02;

struct Args {
    size_mib: u64,
    runs: usize,
    seed: u64,
    tmp_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    fsync: bool,
}

const USAGE: &str = "usage: metering [--size-mib 256] [--runs 5] [--seed 1] [--no-fsync] \
                     [--tmp-dir DIR] [--bin-dir DIR]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        size_mib: 256,
        runs: 5,
        seed: 1,
        tmp_dir: None,
        bin_dir: None,
        fsync: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--size-mib" => args.size_mib = value()?.parse().context("--size-mib takes MiB")?,
            "--runs" => args.runs = value()?.parse().context("--runs takes a number")?,
            "--seed" => args.seed = value()?.parse().context("--seed takes a number")?,
            "--tmp-dir" => args.tmp_dir = Some(value()?.into()),
            "--bin-dir" => args.bin_dir = Some(value()?.into()),
            "--no-fsync" => args.fsync = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    anyhow::ensure!(
        args.runs > 0 && args.size_mib > 0,
        "--runs and --size-mib must be positive"
    );
    Ok(args)
}

/// `dooz sync` until `done` says so, at most [`MAX_ROUNDS`] times; the time of the syncs.
fn sync_until(
    client: &Client,
    mut done: impl FnMut(&dooz_benches::e2e::procs::CliRun) -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let mut elapsed = Duration::ZERO;
    for _ in 0..MAX_ROUNDS {
        let started = Instant::now();
        let run = client.sync(VAULT)?;
        elapsed += started.elapsed();
        if done(&run)? {
            return Ok(elapsed);
        }
    }
    bail!("not done after {MAX_ROUNDS} syncs")
}

/// One initial sync of `orig` through a fresh server; the sync time (A, then B).
fn measure(
    bins: &Binaries,
    dir: &Path,
    orig: &Path,
    metering: bool,
    fsync: bool,
) -> anyhow::Result<(Duration, Option<String>)> {
    std::fs::create_dir_all(dir)?;
    let work = dir.join("a");
    copy_tree(orig, &work).context("could not copy the dataset into A's folder")?;
    let config = dir.join("server.json");
    std::fs::write(
        &config,
        format!("{{\"metering\": {metering}, \"metering_fsync\": {fsync}}}"),
    )?;
    let data = dir.join("server-data");
    let mut server = ServerProcess::start_with(
        &bins.server,
        &data,
        &dir.join("server.log"),
        &[OsStr::new("--config"), config.as_os_str()],
    )?;
    let code = server.enrol_code()?;
    let a = Client::new(&bins.dooz, &dir.join("home-a"), "bench-a");
    let b = Client::new(&bins.dooz, &dir.join("home-b"), "bench-b");
    a.enroll(&code)?;
    b.enroll(&code)?;
    a.vault_create(VAULT, &work)?;
    let invite = a.vault_invite(VAULT)?;
    let b_dir = dir.join("b");
    b.vault_join(&invite, &b_dir, VAULT)?;

    let up = sync_until(&a, |run| {
        Ok(run.sum("changed_during_upload") + run.sum("commit_conflicts") == 0)
    })?;
    let down = sync_until(&b, |_| Ok(compare_trees(&work, &b_dir)?.is_identical()))?;
    eprintln!(
        "  upload {:.2} s, download {:.2} s",
        up.as_secs_f64(),
        down.as_secs_f64()
    );
    // The server's own report of what it metered, through its admin socket.
    let report = if metering {
        let out = std::process::Command::new(&bins.server)
            .arg("--data-dir")
            .arg(&data)
            .args(["usage", "--window", "month", "--format", "csv"])
            .output()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        None
    };
    server.stop()?;
    std::fs::remove_dir_all(dir).ok();
    Ok((up + down, report))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    if let Some(warning) = bins.staleness_warning() {
        eprintln!("warning: {warning}");
    }
    let tmp = match &args.tmp_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("dooz-metering-")
            .tempdir_in(dir),
        None => tempfile::Builder::new().prefix("dooz-metering-").tempdir(),
    }
    .context("could not make the temporary directory")?;
    let orig = tmp.path().join("dataset");
    let spec = DatasetSpec::for_total(args.size_mib * MIB, args.seed);
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let summary = dataset::generate(&orig, &spec, threads)?;
    let total = summary.bytes as f64;
    eprintln!("dataset: {} files, {} bytes", summary.files, summary.bytes);

    let mut on: Vec<f64> = Vec::new();
    let mut off: Vec<f64> = Vec::new();
    let mut report = None;
    for run in 0..args.runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for metering in order {
            let dir = tmp.path().join(format!("run-{run}-{metering}"));
            let (took, r) = measure(&bins, &dir, &orig, metering, args.fsync)?;
            let mode = if metering { "on" } else { "off" };
            eprintln!(
                "run {run}, metering {mode}: {:.2} s, {:.1} MB/s",
                took.as_secs_f64(),
                total / took.as_secs_f64() / 1e6
            );
            if metering {
                on.push(took.as_secs_f64());
                report = r.or(report);
            } else {
                off.push(took.as_secs_f64());
            }
        }
    }
    let (Some(m_on), Some(m_off)) = (median(&on), median(&off)) else {
        bail!("no run finished");
    };
    let overhead = m_on / m_off - 1.0;
    // Each run measured both modes back to back: the median of the per-run ratios is less
    // sensitive to the machine's speed drifting between runs.
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b - 1.0).collect();
    let paired = median(&ratios).unwrap_or(overhead);
    println!(
        "initial sync (A upload + B download) of {} MiB, median of {} runs each{}",
        args.size_mib,
        args.runs,
        if args.fsync {
            ""
        } else {
            ", metering_fsync off"
        }
    );
    println!(
        "  metering on:  {m_on:.2} s  {:.1} MB/s",
        total / m_on / 1e6
    );
    println!(
        "  metering off: {m_off:.2} s  {:.1} MB/s",
        total / m_off / 1e6
    );
    println!(
        "  overhead: {:+.1}% of the medians, {:+.1}% median of the runs' ratios (target <= {:.0}%: {})",
        overhead * 100.0,
        paired * 100.0,
        TARGET_OVERHEAD * 100.0,
        if paired <= TARGET_OVERHEAD {
            "met"
        } else {
            "missed"
        }
    );
    if let Some(report) = report {
        println!("  what the server metered in the last run with metering on:");
        for line in report.lines() {
            println!("    {line}");
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "measure": "metering_overhead",
            "metering_fsync": args.fsync,
            "size_mib": args.size_mib,
            "runs": args.runs,
            "on_s": on,
            "off_s": off,
            "median_on_s": m_on,
            "median_off_s": m_off,
            "overhead": overhead,
            "paired_overhead": paired,
        })
    );
    Ok(())
}

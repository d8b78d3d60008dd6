//! End-to-end sync benchmark: a release `dooz-server` process and two `dooz` CLI devices on this
//! machine sync a generated folder of about 1 GiB, against `restic backup` and `rsync` on the
//! same data in the same run.
//!
//! Run (after `cargo build --release -p dooz-server -p dooz-client`):
//!
//! ```text
//! cargo run --release -p dooz-benches --bin e2e -- [--size-mib 1024] [--runs 3] [--keep]
//!     [--change-percent 1] [--seed 1] [--tmp-dir DIR] [--bin-dir DIR] [--no-baselines]
//!     [--rss-probe-mib 512 | --no-rss-probe]
//! ```
//!
//! The dataset (`dooz_benches::e2e::dataset`) is written once; each run copies it into device
//! A's folder and measures, in order:
//!
//! 1. `rsync -a` of the folder to a fresh directory, `restic init` + `restic backup`;
//! 2. dooz initial sync: `dooz --json sync` on A, then on B (again until B's folder is
//!    byte-identical to A's, which is checked outside the timings);
//! 3. the ~1% change on A's folder; dooz incremental sync (A, then B, checked the same way);
//! 4. dooz no-op sync (A, then B);
//! 5. `restic backup` again, and `rsync -a --no-whole-file` of the changed folder onto the
//!    copy made in step 1;
//! 6. the server's peak RSS (`VmHWM`), then the server is stopped.
//!
//! The client's peak RSS is the largest `peak_rss_bytes` any `dooz sync` reported. A probe
//! then syncs one small and one large file (16 MiB and `--rss-probe-mib`) in their own vaults
//! to show whether the client's peak RSS grows with file size.
//!
//! Output: progress on stderr; on stdout a table of medians with ratios and the issue's targets
//! (met / missed), then JSON lines (`{"run":..}` per run, `{"measure":..}` per figure with its
//! median, `{"target":..}` per target). MB/s is 10^6 bytes per second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dooz_benches::e2e::baselines::{self, Restic, rsync};
use dooz_benches::e2e::dataset::{self, ChangeSpec, DatasetSpec};
use dooz_benches::e2e::median;
use dooz_benches::e2e::procs::{Binaries, CliRun, Client, ServerProcess};
use dooz_benches::e2e::tree::{compare_trees, copy_tree};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;
const VAULT: &str = "bench";
/// Most `dooz sync` runs to wait for one side to finish (each is timed and counted).
const MAX_ROUNDS: usize = 5;
/// Size of the small file of the RSS probe.
const PROBE_SMALL_MIB: u64 = 16;

struct Args {
    size_mib: u64,
    runs: usize,
    keep: bool,
    seed: u64,
    change_percent: f64,
    tmp_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    baselines: bool,
    rss_probe_mib: u64,
}

const USAGE: &str = "usage: e2e [--size-mib 1024] [--runs 3] [--keep] [--change-percent 1] \
                     [--seed 1] [--tmp-dir DIR] [--bin-dir DIR] [--no-baselines] \
                     [--rss-probe-mib 512 | --no-rss-probe]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        size_mib: 1024,
        runs: 3,
        keep: false,
        seed: 1,
        change_percent: 1.0,
        tmp_dir: None,
        bin_dir: None,
        baselines: true,
        rss_probe_mib: 512,
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
            "--change-percent" => {
                args.change_percent = value()?
                    .parse()
                    .context("--change-percent takes a number")?;
            }
            "--tmp-dir" => args.tmp_dir = Some(value()?.into()),
            "--bin-dir" => args.bin_dir = Some(value()?.into()),
            "--rss-probe-mib" => {
                args.rss_probe_mib = value()?.parse().context("--rss-probe-mib takes MiB")?;
            }
            "--keep" => args.keep = true,
            "--no-baselines" => args.baselines = false,
            "--no-rss-probe" => args.rss_probe_mib = 0,
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
    anyhow::ensure!(
        args.change_percent > 0.0 && args.change_percent <= 50.0,
        "--change-percent must be in (0, 50]"
    );
    Ok(args)
}

/// The figures of one run, in the order they are printed.
#[derive(Debug, Default, Clone)]
struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    fn set(&mut self, key: &'static str, value: f64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect(),
        )
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mbps(bytes: f64, secs: f64) -> f64 {
    bytes / 1e6 / secs
}

/// Everything the runs share.
struct Bench {
    bins: Binaries,
    root: PathBuf,
    orig: PathBuf,
    spec: DatasetSpec,
    change: ChangeSpec,
    baselines: bool,
    dataset_bytes: u64,
    dataset_files: usize,
}

/// One side of a sync, over one or more `dooz sync` runs: total wall time, summed reports and
/// the peak RSS.
struct Synced {
    elapsed: Duration,
    rounds: usize,
    bytes_uploaded: u64,
    chunks_uploaded: u64,
    chunks_downloaded: u64,
    peak_rss: u64,
}

impl Synced {
    fn add(&mut self, run: &CliRun) {
        self.elapsed += run.elapsed;
        self.rounds += 1;
        self.bytes_uploaded += run.sum("bytes_uploaded");
        self.chunks_uploaded += run.sum("chunks_uploaded");
        self.chunks_downloaded += run.sum("chunks_downloaded");
        self.peak_rss = self.peak_rss.max(run.max("peak_rss_bytes").unwrap_or(0));
    }

    fn new() -> Self {
        Self {
            elapsed: Duration::ZERO,
            rounds: 0,
            bytes_uploaded: 0,
            chunks_uploaded: 0,
            chunks_downloaded: 0,
            peak_rss: 0,
        }
    }
}

/// Uploads: `dooz sync` on the sending device until nothing is left for another round.
fn sync_sender(client: &Client, vault: &str) -> anyhow::Result<Synced> {
    let mut synced = Synced::new();
    loop {
        let run = client.sync(vault)?;
        synced.add(&run);
        let left = run.sum("changed_during_upload") + run.sum("commit_conflicts");
        if left == 0 {
            return Ok(synced);
        }
        if synced.rounds >= MAX_ROUNDS {
            bail!("the sender still had {left} changes left after {MAX_ROUNDS} syncs");
        }
    }
}

/// Downloads: `dooz sync` on the receiving device until its folder is byte-identical to the
/// sender's (compared outside the timings).
fn sync_receiver(client: &Client, vault: &str, want: &Path, have: &Path) -> anyhow::Result<Synced> {
    let mut synced = Synced::new();
    loop {
        let run = client.sync(vault)?;
        synced.add(&run);
        let diff = compare_trees(want, have)?;
        if diff.is_identical() {
            if !diff.mode.is_empty() {
                eprintln!(
                    "  warning: B has the same bytes but other mode bits: {}",
                    diff.describe()
                );
            }
            return Ok(synced);
        }
        if synced.rounds >= MAX_ROUNDS {
            bail!(
                "after {MAX_ROUNDS} syncs B's folder still differs from A's: {}",
                diff.describe()
            );
        }
        eprintln!("  B not complete yet ({}); syncing again", diff.describe());
    }
}

impl Bench {
    fn run_once(&self, run: usize) -> anyhow::Result<Figures> {
        let dir = self.root.join(format!("run-{run}"));
        std::fs::create_dir_all(&dir)?;
        let work = dir.join("a");
        copy_tree(&self.orig, &work).context("could not copy the dataset into A's folder")?;
        let mut f = Figures::default();
        let total = self.dataset_bytes as f64;
        f.set("dataset_bytes", total);
        f.set("dataset_files", self.dataset_files as f64);

        // Baselines, initial.
        let rsync_dst = dir.join("rsync");
        let restic = if self.baselines {
            let r = rsync(&work, &rsync_dst, true)?;
            f.set("rsync_initial_s", secs(r.elapsed));
            f.set("rsync_initial_mbps", mbps(total, secs(r.elapsed)));
            eprintln!("  rsync -a: {:.2} s", secs(r.elapsed));
            let restic = Restic::init(&dir.join("restic-repo"), &dir.join("restic-cache"))?;
            let b = restic.backup(&work)?;
            f.set("restic_initial_s", secs(b.elapsed));
            f.set("restic_initial_mbps", mbps(total, secs(b.elapsed)));
            f.set("restic_initial_added_bytes", b.data_added as f64);
            eprintln!(
                "  restic backup: {:.2} s, added {} bytes",
                secs(b.elapsed),
                b.data_added
            );
            Some(restic)
        } else {
            None
        };

        // dooz: server, two devices, one vault.
        let mut server = ServerProcess::start(
            &self.bins.server,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let code = server.enrol_code()?;
        let a = Client::new(&self.bins.dooz, &dir.join("home-a"), "bench-a");
        let b = Client::new(&self.bins.dooz, &dir.join("home-b"), "bench-b");
        a.enroll(&code)?;
        b.enroll(&code)?;
        a.vault_create(VAULT, &work)?;
        let invite = a.vault_invite(VAULT)?;
        let b_dir = dir.join("b");
        b.vault_join(&invite, &b_dir, VAULT)?;
        let mut client_peak = 0u64;

        let up = sync_sender(&a, VAULT)?;
        let down = sync_receiver(&b, VAULT, &work, &b_dir)?;
        let initial = up.elapsed + down.elapsed;
        f.set("dooz_initial_s", secs(initial));
        f.set("dooz_initial_mbps", mbps(total, secs(initial)));
        f.set("dooz_initial_upload_s", secs(up.elapsed));
        f.set("dooz_initial_upload_mbps", mbps(total, secs(up.elapsed)));
        f.set("dooz_initial_download_s", secs(down.elapsed));
        f.set(
            "dooz_initial_download_mbps",
            mbps(total, secs(down.elapsed)),
        );
        f.set("dooz_initial_bytes_uploaded", up.bytes_uploaded as f64);
        f.set("dooz_initial_chunks_uploaded", up.chunks_uploaded as f64);
        f.set("dooz_initial_rounds", (up.rounds + down.rounds) as f64);
        f.set("client_peak_rss_upload_bytes", up.peak_rss as f64);
        f.set("client_peak_rss_download_bytes", down.peak_rss as f64);
        client_peak = client_peak.max(up.peak_rss).max(down.peak_rss);
        eprintln!(
            "  dooz initial: A {:.2} s ({} rounds, {} bytes up), B {:.2} s ({} rounds), {:.0} MB/s",
            secs(up.elapsed),
            up.rounds,
            up.bytes_uploaded,
            secs(down.elapsed),
            down.rounds,
            mbps(total, secs(initial))
        );

        // The change.
        let change = dataset::apply_change(&work, &self.spec, &self.change)?;
        let changed = change.bytes_changed();
        f.set("bytes_changed", changed as f64);
        f.set("files_changed", change.files_touched() as f64);
        let up = sync_sender(&a, VAULT)?;
        let down = sync_receiver(&b, VAULT, &work, &b_dir)?;
        let incremental = up.elapsed + down.elapsed;
        f.set("dooz_incremental_s", secs(incremental));
        f.set("dooz_incremental_upload_s", secs(up.elapsed));
        f.set("dooz_incremental_download_s", secs(down.elapsed));
        f.set("dooz_incremental_bytes_uploaded", up.bytes_uploaded as f64);
        f.set(
            "dooz_incremental_chunks_uploaded",
            up.chunks_uploaded as f64,
        );
        f.set(
            "dooz_incremental_chunks_downloaded",
            down.chunks_downloaded as f64,
        );
        f.set(
            "dooz_incremental_upload_ratio",
            up.bytes_uploaded as f64 / changed as f64,
        );
        client_peak = client_peak.max(up.peak_rss).max(down.peak_rss);
        eprintln!(
            "  dooz incremental: {} bytes changed in {} files; A {:.2} s ({} bytes up, {:.2}×), B {:.2} s",
            changed,
            change.files_touched(),
            secs(up.elapsed),
            up.bytes_uploaded,
            up.bytes_uploaded as f64 / changed as f64,
            secs(down.elapsed)
        );

        // No-op.
        let noop_a = a.sync(VAULT)?;
        let noop_b = b.sync(VAULT)?;
        f.set("dooz_noop_s", secs(noop_a.elapsed + noop_b.elapsed));
        f.set("dooz_noop_upload_s", secs(noop_a.elapsed));
        f.set("dooz_noop_download_s", secs(noop_b.elapsed));
        f.set(
            "dooz_noop_bytes_uploaded",
            noop_a.sum("bytes_uploaded") as f64,
        );
        for r in [&noop_a, &noop_b] {
            client_peak = client_peak.max(r.max("peak_rss_bytes").unwrap_or(0));
        }
        eprintln!(
            "  dooz no-op: A {:.3} s, B {:.3} s",
            secs(noop_a.elapsed),
            secs(noop_b.elapsed)
        );
        f.set("client_peak_rss_bytes", client_peak as f64);
        let server_peak = server.stop()?;
        f.set(
            "server_peak_rss_bytes",
            server_peak.map_or(f64::NAN, |b| b as f64),
        );
        eprintln!(
            "  peak RSS: client {:.0} MiB, server {:.0} MiB",
            client_peak as f64 / MIB as f64,
            server_peak.unwrap_or(0) as f64 / MIB as f64
        );

        // Baselines, incremental.
        if let Some(restic) = restic {
            let b = restic.backup(&work)?;
            f.set("restic_incremental_s", secs(b.elapsed));
            f.set("restic_incremental_added_bytes", b.data_added as f64);
            f.set(
                "restic_incremental_upload_ratio",
                b.data_added as f64 / changed as f64,
            );
            let r = rsync(&work, &rsync_dst, false)?;
            f.set("rsync_nwf_incremental_s", secs(r.elapsed));
            f.set("rsync_nwf_literal_bytes", r.literal_bytes as f64);
            eprintln!(
                "  restic incremental: {:.2} s, added {} bytes; rsync --no-whole-file: {:.2} s, literal {} bytes",
                secs(b.elapsed),
                b.data_added,
                secs(r.elapsed),
                r.literal_bytes
            );
        }
        Ok(f)
    }

    /// One small and one large file, each in its own vault: the client's peak RSS for each.
    fn rss_probe(&self, large_mib: u64) -> anyhow::Result<Figures> {
        let dir = self.root.join("rss-probe");
        std::fs::create_dir_all(&dir)?;
        let mut server = ServerProcess::start(
            &self.bins.server,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let code = server.enrol_code()?;
        let a = Client::new(&self.bins.dooz, &dir.join("home-a"), "probe-a");
        let b = Client::new(&self.bins.dooz, &dir.join("home-b"), "probe-b");
        a.enroll(&code)?;
        b.enroll(&code)?;
        let mut f = Figures::default();
        let sizes = [
            (
                "small",
                PROBE_SMALL_MIB,
                ["rss_small_upload_bytes", "rss_small_download_bytes"],
            ),
            (
                "large",
                large_mib,
                ["rss_large_upload_bytes", "rss_large_download_bytes"],
            ),
        ];
        for (name, mib, [up_key, down_key]) in sizes {
            let folder = dir.join(format!("a-{name}"));
            std::fs::create_dir_all(&folder)?;
            write_random_file(&folder.join(format!("{name}.bin")), mib * MIB, mib)?;
            a.vault_create(name, &folder)?;
            let invite = a.vault_invite(name)?;
            let b_folder = dir.join(format!("b-{name}"));
            b.vault_join(&invite, &b_folder, name)?;
            let up = sync_sender(&a, name)?;
            let down = sync_receiver(&b, name, &folder, &b_folder)?;
            f.set(up_key, up.peak_rss as f64);
            f.set(down_key, down.peak_rss as f64);
            eprintln!(
                "  RSS probe, one {mib} MiB file: upload peak {:.0} MiB ({:.2} s), download peak {:.0} MiB ({:.2} s)",
                up.peak_rss as f64 / MIB as f64,
                secs(up.elapsed),
                down.peak_rss as f64 / MIB as f64,
                secs(down.elapsed)
            );
        }
        server.stop()?;
        Ok(f)
    }
}

/// Writes `len` random bytes in 8 MiB pieces (so the probe's file is not held in memory).
fn write_random_file(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = len;
    let mut piece = 0u64;
    while left > 0 {
        let n = left.min(8 * MIB);
        file.write_all(&dooz_benches::random_bytes(n as usize, seed << 32 | piece))?;
        left -= n;
        piece += 1;
    }
    file.flush()?;
    Ok(())
}

/// What the table prints for each figure: key, label, how to show it.
#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Secs,
    MbPerSec,
    Count,
    Ratio,
    Mib,
}

const ROWS: &[(&str, &str, Unit)] = &[
    ("dataset_bytes", "dataset", Unit::Bytes),
    ("dataset_files", "dataset files", Unit::Count),
    (
        "bytes_changed",
        "bytes changed (the ~1% change)",
        Unit::Bytes,
    ),
    ("files_changed", "files changed or added", Unit::Count),
    (
        "dooz_initial_s",
        "dooz initial sync, A up + B down",
        Unit::Secs,
    ),
    ("dooz_initial_mbps", "dooz initial sync", Unit::MbPerSec),
    ("dooz_initial_upload_s", "  A: upload", Unit::Secs),
    ("dooz_initial_upload_mbps", "  A: upload", Unit::MbPerSec),
    ("dooz_initial_download_s", "  B: download", Unit::Secs),
    (
        "dooz_initial_download_mbps",
        "  B: download",
        Unit::MbPerSec,
    ),
    (
        "dooz_initial_bytes_uploaded",
        "  bytes uploaded (sealed)",
        Unit::Bytes,
    ),
    (
        "dooz_initial_rounds",
        "  dooz sync runs (A + B)",
        Unit::Count,
    ),
    (
        "dooz_incremental_s",
        "dooz incremental sync, A + B",
        Unit::Secs,
    ),
    ("dooz_incremental_upload_s", "  A: upload", Unit::Secs),
    ("dooz_incremental_download_s", "  B: download", Unit::Secs),
    (
        "dooz_incremental_bytes_uploaded",
        "  bytes uploaded",
        Unit::Bytes,
    ),
    (
        "dooz_incremental_upload_ratio",
        "  uploaded / changed",
        Unit::Ratio,
    ),
    ("dooz_noop_s", "dooz no-op sync, A + B", Unit::Secs),
    ("dooz_noop_upload_s", "  A", Unit::Secs),
    ("dooz_noop_download_s", "  B", Unit::Secs),
    (
        "client_peak_rss_bytes",
        "client peak RSS (any sync)",
        Unit::Mib,
    ),
    (
        "client_peak_rss_upload_bytes",
        "  initial upload (A)",
        Unit::Mib,
    ),
    (
        "client_peak_rss_download_bytes",
        "  initial download (B)",
        Unit::Mib,
    ),
    ("server_peak_rss_bytes", "server peak RSS", Unit::Mib),
    ("restic_initial_s", "restic backup, initial", Unit::Secs),
    (
        "restic_initial_mbps",
        "restic backup, initial",
        Unit::MbPerSec,
    ),
    (
        "restic_initial_added_bytes",
        "  added to the repository",
        Unit::Bytes,
    ),
    (
        "restic_incremental_s",
        "restic backup, incremental",
        Unit::Secs,
    ),
    (
        "restic_incremental_added_bytes",
        "  added to the repository",
        Unit::Bytes,
    ),
    (
        "restic_incremental_upload_ratio",
        "  added / changed",
        Unit::Ratio,
    ),
    ("rsync_initial_s", "rsync -a, initial", Unit::Secs),
    ("rsync_initial_mbps", "rsync -a, initial", Unit::MbPerSec),
    (
        "rsync_nwf_incremental_s",
        "rsync -a --no-whole-file, incremental",
        Unit::Secs,
    ),
    (
        "rsync_nwf_literal_bytes",
        "  literal data sent",
        Unit::Bytes,
    ),
    (
        "rss_small_upload_bytes",
        "RSS probe: upload, one 16 MiB file",
        Unit::Mib,
    ),
    (
        "rss_small_download_bytes",
        "RSS probe: download, one 16 MiB file",
        Unit::Mib,
    ),
    (
        "rss_large_upload_bytes",
        "RSS probe: upload, one large file",
        Unit::Mib,
    ),
    (
        "rss_large_download_bytes",
        "RSS probe: download, one large file",
        Unit::Mib,
    ),
];

fn show(value: f64, unit: Unit) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    match unit {
        Unit::Bytes => format!("{:.0} B ({:.2} MiB)", value, value / MIB as f64),
        Unit::Secs => format!("{value:.3} s"),
        Unit::MbPerSec => format!("{value:.1} MB/s"),
        Unit::Count => format!("{value:.0}"),
        Unit::Ratio => format!("{value:.3}×"),
        Unit::Mib => format!("{:.1} MiB", value / MIB as f64),
    }
}

/// A target of the issue: name, value, threshold, whether it is met, and how it reads.
struct Target {
    name: &'static str,
    value: Option<f64>,
    threshold: f64,
    met: Option<bool>,
    text: String,
}

fn targets(m: &Figures, probe: Option<&Figures>) -> Vec<Target> {
    let ratio = |a: &str, b: &str| Some(m.get(a)? / m.get(b)?);
    let at_least = |v: Option<f64>, t: f64| v.map(|v| v >= t);
    let at_most = |v: Option<f64>, t: f64| v.map(|v| v <= t);
    let vs_restic = ratio("dooz_initial_mbps", "restic_initial_mbps");
    let vs_rsync = ratio("dooz_initial_mbps", "rsync_initial_mbps");
    let upload = ratio("dooz_incremental_bytes_uploaded", "bytes_changed");
    let incr = ratio("dooz_incremental_s", "rsync_nwf_incremental_s");
    let rss = m.get("client_peak_rss_bytes").map(|b| b / MIB as f64);
    let mut out = vec![
        Target {
            name: "initial_vs_restic",
            value: vs_restic,
            threshold: 2.0,
            met: at_least(vs_restic, 2.0),
            text: "initial sync MB/s ≥ 2× restic backup MB/s".to_owned(),
        },
        Target {
            name: "initial_vs_rsync",
            value: vs_rsync,
            threshold: 0.75,
            met: at_least(vs_rsync, 0.75),
            text: "initial sync MB/s ≥ 0.75× rsync -a MB/s".to_owned(),
        },
        Target {
            name: "incremental_upload",
            value: upload,
            threshold: 2.0,
            met: at_most(upload, 2.0),
            text: "incremental bytes uploaded ≤ 2× bytes changed".to_owned(),
        },
        Target {
            name: "incremental_time_vs_rsync",
            value: incr,
            threshold: 1.0,
            met: at_most(incr, 1.0),
            text: "incremental wall time ≤ rsync --no-whole-file (ratio)".to_owned(),
        },
        Target {
            name: "client_peak_rss_mib",
            value: rss,
            threshold: 256.0,
            met: at_most(rss, 256.0),
            text: "client peak RSS ≤ 256 MiB (MiB)".to_owned(),
        },
    ];
    // Flat in file size: the large file's peak within 32 MiB of the small file's.
    let growth = probe.and_then(|p| {
        let up = p.get("rss_large_upload_bytes")? - p.get("rss_small_upload_bytes")?;
        let down = p.get("rss_large_download_bytes")? - p.get("rss_small_download_bytes")?;
        Some(up.max(down) / MIB as f64)
    });
    out.push(Target {
        name: "client_rss_growth_mib",
        value: growth,
        threshold: 32.0,
        met: at_most(growth, 32.0),
        text: "client peak RSS flat in file size: large − small file ≤ 32 MiB (MiB)".to_owned(),
    });
    out
}

fn machine_note() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let mem = mem_kib / (1u64 << 20) as f64;
    format!("{cpus} CPUs ({model}), {mem:.0} GiB RAM")
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    if let Some(warning) = bins.staleness_warning() {
        eprintln!("warning: {warning}");
    }
    let baselines = args.baselines
        && match baselines::missing_tools_message() {
            Some(message) => {
                eprintln!("warning: {message}; measuring dooz only");
                false
            }
            None => true,
        };
    let tmp = match &args.tmp_dir {
        Some(dir) => tempfile::Builder::new().prefix("dooz-e2e-").tempdir_in(dir),
        None => tempfile::Builder::new().prefix("dooz-e2e-").tempdir(),
    }
    .context("could not make the temporary directory")?;
    let root = tmp.path().to_owned();
    let _keep = if args.keep {
        eprintln!("keeping {}", root.display());
        let _kept: PathBuf = tmp.keep();
        None
    } else {
        Some(tmp)
    };

    let spec = DatasetSpec::for_total(args.size_mib * MIB, args.seed);
    let change = ChangeSpec::new(args.change_percent / 100.0, args.seed.wrapping_add(1000));
    let orig = root.join("dataset");
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let summary = dataset::generate(&orig, &spec, threads)?;
    eprintln!(
        "dataset: {} files ({} binaries, {} logs, {} small), {} bytes, written in {:.1} s to {}",
        summary.files,
        summary.binaries,
        summary.logs,
        summary.small,
        summary.bytes,
        started.elapsed().as_secs_f64(),
        orig.display()
    );
    let budgets = dataset::change_budgets(summary.bytes, change.fraction);
    eprintln!(
        "change: {} bytes ({})",
        budgets.iter().map(|(_, b)| b).sum::<u64>(),
        budgets
            .iter()
            .map(|(k, b)| format!("{k:?} {b}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bench = Bench {
        bins,
        root: root.clone(),
        orig,
        spec,
        change,
        baselines,
        dataset_bytes: summary.bytes,
        dataset_files: summary.files,
    };

    let mut runs = Vec::new();
    for run in 1..=args.runs {
        eprintln!("run {run}/{}", args.runs);
        let figures = bench.run_once(run)?;
        println!("{}", json!({ "run": run, "figures": figures.json() }));
        runs.push(figures);
        if !args.keep {
            let _ = std::fs::remove_dir_all(root.join(format!("run-{run}")));
        }
    }
    let probe = if args.rss_probe_mib > 0 {
        eprintln!("RSS probe");
        Some(bench.rss_probe(args.rss_probe_mib)?)
    } else {
        None
    };

    // Medians.
    let mut medians = Figures::default();
    let mut keys: Vec<&'static str> = Vec::new();
    for f in &runs {
        for (k, _) in &f.0 {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    for key in &keys {
        let values: Vec<f64> = runs.iter().filter_map(|f| f.get(key)).collect();
        if let Some(m) = median(&values) {
            medians.set(key, m);
        }
        println!(
            "{}",
            json!({ "measure": key, "median": median(&values), "runs": values })
        );
    }
    if let Some(p) = &probe {
        for (k, v) in &p.0 {
            println!("{}", json!({ "measure": k, "median": v, "runs": [v] }));
            medians.set(k, *v);
        }
    }
    let targets = targets(&medians, probe.as_ref());
    for t in &targets {
        println!(
            "{}",
            json!({ "target": t.name, "value": t.value, "threshold": t.threshold, "met": t.met, "description": t.text })
        );
    }

    // Table.
    println!();
    println!(
        "End-to-end sync, {} MiB requested, {} run(s), medians; {}",
        args.size_mib,
        args.runs,
        machine_note()
    );
    println!();
    println!("| figure | median | runs |");
    println!("|---|---|---|");
    for (key, label, unit) in ROWS {
        let Some(value) = medians.get(key) else {
            continue;
        };
        let all: Vec<String> = runs
            .iter()
            .filter_map(|f| f.get(key))
            .map(|v| show(v, *unit))
            .collect();
        let all = if all.len() > 1 {
            all.join(", ")
        } else {
            String::new()
        };
        println!("| {label} | {} | {all} |", show(value, *unit));
    }
    println!();
    println!("| target | value | met |");
    println!("|---|---|---|");
    for t in &targets {
        let value = t.value.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!("| {} | {value} | {met} |", t.text);
    }
    Ok(())
}

//! The baselines the end-to-end figures are compared with: `restic backup` to a local
//! repository ([`Restic`]) and `rsync` between local folders ([`rsync`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The repository password the harness gives restic (the repository is thrown away).
const RESTIC_PASSWORD: &str = "dooz-bench";

/// The first line of `tool --version` (`restic version`), or `None` if it does not run.
pub fn tool_version(tool: &str) -> Option<String> {
    let flag = if tool == "restic" {
        "version"
    } else {
        "--version"
    };
    let out = Command::new(tool)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// What to install for the missing baseline tools, or `None` when restic and rsync both run.
pub fn missing_tools_message() -> Option<String> {
    let missing: Vec<_> = ["restic", "rsync"]
        .into_iter()
        .filter(|tool| tool_version(tool).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found: the baselines need them. Install with `sudo apt-get install -y {}` \
             (Debian/Ubuntu), or run with --no-baselines",
            missing.join(" and "),
            missing.join(" ")
        )
    })
}

fn run(cmd: &mut Command) -> anyhow::Result<(Output, Duration)> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {:?}", cmd.get_program()))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((out, elapsed))
}

/// One `restic backup`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResticBackup {
    /// Wall time of the command.
    pub elapsed: Duration,
    /// "Added to the repository" (`data_added` of the JSON summary): bytes stored, after
    /// deduplication and compression.
    pub data_added: u64,
    /// Bytes read from the files (`total_bytes_processed`).
    pub bytes_processed: u64,
    /// New files.
    pub files_new: u64,
    /// Changed files.
    pub files_changed: u64,
}

/// A local restic repository.
#[derive(Debug, Clone)]
pub struct Restic {
    repo: PathBuf,
    cache: PathBuf,
}

impl Restic {
    /// `restic init` of a new repository at `repo`, with its cache in `cache`.
    pub fn init(repo: &Path, cache: &Path) -> anyhow::Result<Self> {
        let restic = Self {
            repo: repo.to_owned(),
            cache: cache.to_owned(),
        };
        run(restic.command().arg("init")).context("restic init failed")?;
        Ok(restic)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("restic");
        cmd.env("RESTIC_PASSWORD", RESTIC_PASSWORD)
            .env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_CACHE_DIR", &self.cache)
            .arg("--quiet");
        cmd
    }

    /// `restic backup PATH` (host `bench`, so the second backup of a path finds the first as
    /// its parent).
    pub fn backup(&self, path: &Path) -> anyhow::Result<ResticBackup> {
        let mut cmd = self.command();
        cmd.args(["backup", "--json", "--host", "bench"]).arg(path);
        let (out, elapsed) = run(&mut cmd).context("restic backup failed")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = parse_restic_summary(&stdout).with_context(|| {
            format!("restic backup printed no JSON summary; it printed: {stdout}")
        })?;
        Ok(ResticBackup { elapsed, ..summary })
    }
}

/// The `summary` line of `restic backup --json` (elapsed left zero).
pub fn parse_restic_summary(stdout: &str) -> Option<ResticBackup> {
    let summary = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v.get("message_type").and_then(|t| t.as_str()) == Some("summary"))?;
    let field = |name: &str| summary.get(name).and_then(serde_json::Value::as_u64);
    Some(ResticBackup {
        elapsed: Duration::ZERO,
        data_added: field("data_added")?,
        bytes_processed: field("total_bytes_processed").unwrap_or(0),
        files_new: field("files_new").unwrap_or(0),
        files_changed: field("files_changed").unwrap_or(0),
    })
}

/// One `rsync` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RsyncRun {
    /// Wall time of the command.
    pub elapsed: Duration,
    /// "Literal data" of `--stats`: bytes sent as is (not matched in the destination).
    pub literal_bytes: u64,
    /// "Matched data" of `--stats`: bytes the destination already had.
    pub matched_bytes: u64,
}

/// `rsync -a --stats [--no-whole-file] SRC/ DST/`: copies the contents of `src` into `dst`.
/// Local rsync copies whole files by default; `--no-whole-file` makes it use its delta
/// algorithm against what `dst` already holds.
pub fn rsync(src: &Path, dst: &Path, whole_file: bool) -> anyhow::Result<RsyncRun> {
    let slash = |p: &Path| {
        let mut s = OsString::from(p.as_os_str());
        s.push("/");
        s
    };
    let mut cmd = Command::new("rsync");
    cmd.args(["-a", "--stats"]);
    if !whole_file {
        cmd.arg("--no-whole-file");
    }
    cmd.args([slash(src), slash(dst)]);
    let (out, elapsed) = run(&mut cmd).context("rsync failed")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(RsyncRun {
        elapsed,
        literal_bytes: parse_rsync_stat(&stdout, "Literal data").unwrap_or(0),
        matched_bytes: parse_rsync_stat(&stdout, "Matched data").unwrap_or(0),
    })
}

/// A byte count of `rsync --stats` (`Literal data: 1,234 bytes`).
pub fn parse_rsync_stat(stdout: &str, name: &str) -> Option<u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?;
    let digits: String = line
        .split_whitespace()
        .next()?
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_summary() {
        let out = r#"{"message_type":"status","percent_done":0.5}
{"message_type":"summary","files_new":3,"files_changed":1,"files_unmodified":0,"dirs_new":2,"data_added":12345,"total_files_processed":4,"total_bytes_processed":99999,"total_duration":0.5,"snapshot_id":"abc"}"#;
        let s = parse_restic_summary(out).unwrap();
        assert_eq!(
            (
                s.data_added,
                s.bytes_processed,
                s.files_new,
                s.files_changed
            ),
            (12345, 99999, 3, 1)
        );
        assert!(parse_restic_summary("{\"message_type\":\"status\"}").is_none());
    }

    #[test]
    fn parses_rsync_stats() {
        let out = "Number of files: 5 (reg: 4, dir: 1)\nTotal file size: 1,048,576 bytes\n\
                   Literal data: 12,345 bytes\nMatched data: 1,036,231 bytes\n";
        assert_eq!(parse_rsync_stat(out, "Literal data"), Some(12_345));
        assert_eq!(parse_rsync_stat(out, "Matched data"), Some(1_036_231));
        assert_eq!(parse_rsync_stat(out, "Total file size"), Some(1_048_576));
        assert_eq!(parse_rsync_stat(out, "Nothing"), None);
    }

    /// Runs the real tools on a small tree when they are installed (the harness needs them;
    /// `missing_tools_message` says how to install them).
    #[test]
    fn baselines_run_on_a_small_tree() {
        if let Some(message) = missing_tools_message() {
            eprintln!("skipping the live baseline check: {message}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let data = crate::random_bytes(1 << 20, 3);
        std::fs::write(src.join("sub/a.bin"), &data).unwrap();
        std::fs::write(src.join("b.txt"), crate::text_like(50_000, 4)).unwrap();

        let first = rsync(&src, &dst, true).unwrap();
        assert!(first.literal_bytes >= 1 << 20, "{first:?}");
        let same = crate::e2e::tree::compare_trees(&src, &dst).unwrap();
        assert!(same.is_exact(), "{}", same.describe());
        let mut edited = data.clone();
        edited.splice(500_000..500_000, [1u8; 1000]);
        std::fs::write(src.join("sub/a.bin"), &edited).unwrap();
        let delta = rsync(&src, &dst, false).unwrap();
        assert!(delta.literal_bytes < 100_000, "{delta:?}");
        assert!(delta.matched_bytes > 900_000, "{delta:?}");

        let restic = Restic::init(&dir.path().join("repo"), &dir.path().join("cache")).unwrap();
        let initial = restic.backup(&src).unwrap();
        assert_eq!(initial.files_new, 2);
        assert!(initial.data_added > 1 << 20, "{initial:?}");
        std::fs::write(src.join("b.txt"), crate::text_like(60_000, 4)).unwrap();
        let incremental = restic.backup(&src).unwrap();
        assert_eq!(incremental.files_changed, 1, "{incremental:?}");
        assert!(incremental.data_added < 200_000, "{incremental:?}");
    }
}

//! The processes of the end-to-end run: finding the release binaries ([`Binaries`]), a
//! `dooz-server` on loopback ([`ServerProcess`]) and `dooz` CLI devices ([`Client`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

/// The command that builds the binaries the harness drives.
pub const BUILD_COMMAND: &str = "cargo build --release -p dooz-server -p dooz-client";

/// How long the server gets to print its banner.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server gets to stop after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The release binaries: `dooz` and `dooz-server`.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `dooz` CLI.
    pub dooz: PathBuf,
    /// The server.
    pub server: PathBuf,
}

impl Binaries {
    /// Finds both binaries in `dir`, else next to this executable (`target/release` when run
    /// with `cargo run --release`), else in the workspace's `target/release`. The error says
    /// which command builds them.
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let candidates: Vec<PathBuf> = match dir {
            Some(dir) => vec![dir.to_owned()],
            None => {
                let mut dirs = Vec::new();
                if let Some(parent) = std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(Path::to_owned))
                {
                    dirs.push(parent);
                }
                dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
                dirs
            }
        };
        for dir in &candidates {
            let found = Self {
                dooz: dir.join("dooz"),
                server: dir.join("dooz-server"),
            };
            if found.dooz.is_file() && found.server.is_file() {
                return Ok(found);
            }
        }
        let looked: Vec<_> = candidates.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "the release binaries `dooz` and `dooz-server` are not in {}: build them first with \
             `{BUILD_COMMAND}` (or pass --bin-dir DIR)",
            looked.join(" or ")
        )
    }

    /// A warning if a source file of the client or server is newer than its binary.
    pub fn staleness_warning(&self) -> Option<String> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut stale = Vec::new();
        for (bin, crates) in [
            (&self.dooz, &["sync-client", "protocol", "crypto"][..]),
            (
                &self.server,
                &["sync-server", "protocol", "crypto", "storage-backends"][..],
            ),
        ] {
            let built = modified(bin)?;
            let newest = crates
                .iter()
                .filter_map(|c| newest_source(&workspace.join(c).join("src")))
                .max()?;
            if newest > built {
                stale.push(bin.display().to_string());
            }
        }
        (!stale.is_empty()).then(|| {
            format!(
                "{} older than its sources; rebuild with `{BUILD_COMMAND}` to measure the current code",
                stale.join(" and ")
            )
        })
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The newest modification time of the `.rs` files under `dir`.
fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension() == Some(OsStr::new("rs")) {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}

/// The peak resident set size (`VmHWM`) of process `pid`, from `/proc/<pid>/status`.
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The current resident set size (`VmRSS`) of process `pid`, from `/proc/<pid>/status`.
pub fn rss_of(pid: u32) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

/// The `VmHWM` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

/// The `field` (`"VmHWM:"`, `"VmRSS:"`, ...) of a `/proc/<pid>/status` text, in bytes.
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A free UDP port on 127.0.0.1 (free when asked; the server binds it right after).
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("could not find a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

/// What the server's banner says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
}

/// Reads the address (`... listening on ADDR (QUIC ...`) and the fingerprint
/// (`certificate fingerprint: FP`) from the banner lines seen so far.
pub fn parse_banner<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<Banner> {
    let mut addr = None;
    let mut fingerprint = None;
    for line in lines {
        if let Some(rest) = line.split_once("listening on ").map(|(_, r)| r) {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some((_, fp)) = line.split_once("certificate fingerprint:") {
            fingerprint = Some(fp.trim().to_owned());
        }
    }
    Some(Banner {
        addr: addr?,
        fingerprint: fingerprint?,
    })
}

/// A `dooz-server` process on a fresh data dir, listening on a free loopback port.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    /// What its banner said.
    pub banner: Banner,
}

impl ServerProcess {
    /// Starts `bin --data-dir DATA_DIR --listen 127.0.0.1:PORT`, its stderr going to `log`, and
    /// waits for its banner.
    pub fn start(bin: &Path, data_dir: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, data_dir, log, &[])
    }

    /// [`start`](Self::start) with `extra` arguments first (`--config FILE`, say).
    pub fn start_with(
        bin: &Path,
        data_dir: &Path,
        log: &Path,
        extra: &[&OsStr],
    ) -> anyhow::Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        let mut child = Command::new(bin)
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--http-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log).context("could not create the server log")?)
            .spawn()
            .with_context(|| format!("could not start {}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the server's stdout is not piped"))?;
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the whole life of the server, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            child: Some(child),
            bin: bin.to_owned(),
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
            banner: Banner {
                addr: listen,
                fingerprint: String::new(),
            },
        };
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    lines.push(line);
                    if let Some(banner) = parse_banner(lines.iter().map(String::as_str)) {
                        server.banner = banner;
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!(
                        "dooz-server exited before printing its address; its log ({}): {}",
                        server.log.display(),
                        server.log_tail()
                    )
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "dooz-server printed no address within {} s; its log ({}): {}",
                    SERVER_START_TIMEOUT.as_secs(),
                    server.log.display(),
                    server.log_tail()
                );
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its peak resident set size so far.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(self.pid()?)
    }

    /// Mints a reusable enrolment code (`dooz-server --data-dir D admin enrol-code --reusable`),
    /// retrying while the server's admin socket comes up.
    pub fn enrol_code(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            let out = Command::new(&self.bin)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(["admin", "enrol-code", "--reusable", "--expires", "1d"])
                .stdin(Stdio::null())
                .output()
                .context("could not run dooz-server admin enrol-code")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.success()
                && let Some(code) = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())
            {
                return Ok(code.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "dooz-server admin enrol-code failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Reads the peak RSS, then stops the server with SIGTERM (SIGKILL if it does not stop in
    /// time). Returns the peak RSS.
    pub fn stop(&mut self) -> anyhow::Result<Option<u64>> {
        let peak = self.peak_rss();
        let Some(mut child) = self.child.take() else {
            return Ok(peak);
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(peak);
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!(
                    "dooz-server did not stop within {} s of SIGTERM; killed it",
                    SERVER_STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `dooz` command: its JSON lines and wall time.
#[derive(Debug, Clone)]
pub struct CliRun {
    /// The JSON lines it printed on stdout.
    pub json: Vec<Value>,
    /// Wall time, process start to exit.
    pub elapsed: Duration,
}

impl CliRun {
    /// The first JSON object with a string field `key`.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.json.iter().find_map(|v| v.get(key)?.as_str())
    }

    /// The sum of the numeric field `key` over the JSON lines.
    pub fn sum(&self, key: &str) -> u64 {
        self.json.iter().filter_map(|v| v.get(key)?.as_u64()).sum()
    }

    /// The largest value of the numeric field `key` over the JSON lines.
    pub fn max(&self, key: &str) -> Option<u64> {
        self.json.iter().filter_map(|v| v.get(key)?.as_u64()).max()
    }
}

/// Parses JSON lines; lines that are not JSON objects are skipped.
pub fn parse_json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// A device: the `dooz` CLI with its own `--home`.
#[derive(Debug, Clone)]
pub struct Client {
    bin: PathBuf,
    home: PathBuf,
    name: String,
}

impl Client {
    /// A device called `name` with its state in `home`.
    pub fn new(bin: &Path, home: &Path, name: &str) -> Self {
        Self {
            bin: bin.to_owned(),
            home: home.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Runs `dooz --home HOME --json ARGS...`; an error carries its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> anyhow::Result<CliRun> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--home")
            .arg(&self.home)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null());
        let shown: Vec<_> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("could not run {}", self.bin.display()))?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!(
                "device {}: `dooz {}` failed ({}): {}",
                self.name,
                shown.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(CliRun {
            json: parse_json_lines(&String::from_utf8_lossy(&out.stdout)),
            elapsed,
        })
    }

    /// `dooz enroll CODE --name NAME`.
    pub fn enroll(&self, code: &str) -> anyhow::Result<CliRun> {
        self.run(&["enroll", code, "--name", &self.name])
    }

    /// `dooz vault create VAULT --folder DIR`.
    pub fn vault_create(&self, vault: &str, folder: &Path) -> anyhow::Result<CliRun> {
        self.run(&[
            OsStr::new("vault"),
            OsStr::new("create"),
            OsStr::new(vault),
            OsStr::new("--folder"),
            folder.as_os_str(),
        ])
    }

    /// `dooz vault invite VAULT`: the vault code.
    pub fn vault_invite(&self, vault: &str) -> anyhow::Result<String> {
        let run = self.run(&["vault", "invite", vault])?;
        run.string("code")
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`dooz vault invite` printed no \"code\": {:?}", run.json))
    }

    /// `dooz vault join CODE --folder DIR --name VAULT`.
    pub fn vault_join(&self, code: &str, folder: &Path, vault: &str) -> anyhow::Result<CliRun> {
        self.run(&[
            OsStr::new("vault"),
            OsStr::new("join"),
            OsStr::new(code),
            OsStr::new("--folder"),
            folder.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(vault),
        ])
    }

    /// `dooz sync VAULT`.
    pub fn sync(&self, vault: &str) -> anyhow::Result<CliRun> {
        self.run(&["sync", vault])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tdooz\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        let own = peak_rss_of(std::process::id()).unwrap();
        assert!(own > 1 << 20, "{own}");
    }

    #[test]
    fn parses_the_server_banner() {
        let banner = [
            "dooz-server 0.1.0 listening on 127.0.0.1:7311 (QUIC, ALPN dooz/1)",
            "  data dir:                /tmp/x",
            "  certificate fingerprint: ab12cd",
        ];
        assert_eq!(parse_banner(banner[..2].iter().copied()), None);
        assert_eq!(
            parse_banner(banner),
            Some(Banner {
                addr: "127.0.0.1:7311".parse().unwrap(),
                fingerprint: "ab12cd".to_owned()
            })
        );
    }

    #[test]
    fn parses_json_lines_and_sums() {
        let out = "{\"vault\":\"a\",\"bytes_uploaded\":10,\"peak_rss_bytes\":5}\nnot json\n\
                   [1]\n{\"vault\":\"b\",\"bytes_uploaded\":7,\"peak_rss_bytes\":9}\n";
        let run = CliRun {
            json: parse_json_lines(out),
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.json.len(), 2);
        assert_eq!(run.sum("bytes_uploaded"), 17);
        assert_eq!(run.max("peak_rss_bytes"), Some(9));
        assert_eq!(run.string("vault"), Some("a"));
    }

    #[test]
    fn missing_binaries_say_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let e = Binaries::locate(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains(BUILD_COMMAND), "{e}");
    }

    #[test]
    fn client_errors_carry_stderr() {
        // A shell given dooz's flags fails like a broken dooz binary would.
        let client = Client::new(Path::new("/bin/sh"), Path::new("/nonexistent"), "t");
        let e = client.run(&["-c"]).unwrap_err().to_string();
        assert!(e.contains("device t"), "{e}");
    }
}

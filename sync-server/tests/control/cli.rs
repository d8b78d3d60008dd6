//! `dooz-server admin tenant-create` and `admin reset-admin-token` on a stopped server.

use std::process::Command;

use dooz_server::control::{CONTROL_DIR, ControlStore, Secret, SecretKind};

fn admin(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dooz-server"))
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn bootstrap_subcommands_print_working_secrets_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = admin(
        dir.path(),
        &["tenant-create", "acme", "--scopes", "admin,devices"],
    );
    let token = admin(dir.path(), &["reset-admin-token"]);
    let control = ControlStore::open(dir.path().join(CONTROL_DIR)).unwrap();
    let key = Secret::parse(SecretKind::ApiKey, &key).expect("an API key");
    let record = control.api_key_by_hash(&key.hash()).unwrap().unwrap();
    assert_eq!(record.scopes.len(), 2);
    let token = Secret::parse(SecretKind::AdminToken, &token).expect("an admin token");
    assert!(
        control
            .admin_token_hash()
            .unwrap()
            .unwrap()
            .matches(&token.hash())
    );
    // A bad scope is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_dooz-server"))
        .args([
            "admin",
            "tenant-create",
            "other",
            "--scopes",
            "root",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));
}

#[test]
fn json_logs_are_one_object_a_line() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dooz-server"))
        .args(["--log-format", "json", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("DOOZ_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut listening = None;
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if event["fields"]["message"] == "listening" {
            listening = Some(event);
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let event = listening.expect("the server logged that it listens");
    assert_eq!(event["level"], "INFO");
    assert!(
        event["fields"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

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

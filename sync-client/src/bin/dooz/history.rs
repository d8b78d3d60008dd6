//! `dooz history PATH` and `dooz restore PATH --version V`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use dooz_client::{EntryKind, RelPath, VaultMeta};
use dooz_crypto::VersionId;
use serde_json::json;

use crate::home::Opened;
use crate::output::{Out, bytes};
use crate::sync::{connect, engine, report_sync};

/// The bound vault whose folder holds `path`, its name, and the path inside it.
fn locate(home: &Opened, path: &Path) -> anyhow::Result<(String, VaultMeta, RelPath)> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let abs = normalise(&abs);
    for meta in home.index.vaults()? {
        let root = normalise(&meta.root);
        if let Ok(inside) = abs.strip_prefix(&root) {
            let rel = RelPath::from_path(inside).map_err(|e| {
                anyhow!(
                    "{} cannot be synced, so it has no history: {e}",
                    path.display()
                )
            })?;
            let name = home.vault_name(meta.vault)?;
            return Ok((name, meta, rel));
        }
    }
    Err(anyhow!(
        "{} is not inside a folder bound to a vault on this device (see `dooz status`)",
        path.display()
    ))
}

/// `.` and `..` resolved without touching the disk (the file may be gone).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `dooz history PATH`.
pub(crate) async fn history(home: &Opened, path: &Path, out: &Out) -> anyhow::Result<()> {
    let enrolled = home.enrolled()?;
    let (name, meta, rel) = locate(home, path)?;
    let conn = connect(&enrolled.connector(), out).await?;
    let engine = engine(home, &enrolled, &name, &meta, conn.clone(), out)?;
    let versions = engine.history(&rel).await;
    conn.close().await;
    let versions = versions.with_context(|| format!("cannot list the versions of {rel}"))?;
    if versions.is_empty() {
        return Err(anyhow!(
            "{rel} has no versions on the server: it was never synced from any device"
        ));
    }
    let rows: Vec<_> = versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version.to_string(),
                "seq": v.seq.get(),
                "device": v.device.to_string(),
                "deleted": v.is_deletion(),
                "kind": v.state.as_ref().map(|s| match s.kind {
                    EntryKind::File => "file",
                    EntryKind::Dir => "dir",
                    EntryKind::Symlink => "symlink",
                }),
                "size": v.state.as_ref().map(|s| s.size),
                "mtime_ns": v.state.as_ref().map(|s| s.mtime_ns),
            })
        })
        .collect();
    out.emit(
        json!({ "vault": name, "path": rel.to_string(), "versions": rows }),
        || {
            let mut text = format!(
                "{rel} in vault {name}: {} versions, newest first\n",
                versions.len()
            );
            for v in &versions {
                let what = match &v.state {
                    None => "deleted".to_owned(),
                    Some(s) if s.kind == EntryKind::Dir => "directory".to_owned(),
                    Some(s) => bytes(s.size),
                };
                let when = v
                    .state
                    .as_ref()
                    .map(|s| {
                        crate::output::utc_time(
                            u64::try_from(s.mtime_ns / 1_000_000_000).unwrap_or(0),
                        )
                    })
                    .unwrap_or_default();
                text.push_str(&format!(
                    "  {}  seq {:>6}  {what:>10}  {when}\n",
                    v.version,
                    v.seq.get()
                ));
            }
            text.push_str(&format!(
                "restore one with: dooz restore {} --version VERSION",
                path.display()
            ));
            text
        },
    );
    Ok(())
}

/// `dooz restore PATH --version V`.
pub(crate) async fn restore(
    home: &Opened,
    path: &Path,
    version: &str,
    out: &Out,
) -> anyhow::Result<()> {
    let version: VersionId = version.parse().map_err(|e| {
        anyhow!(
            "{version:?} is not a version id ({e}); copy one from `dooz history {}`",
            path.display()
        )
    })?;
    let enrolled = home.enrolled()?;
    let (name, meta, rel) = locate(home, path)?;
    let conn = connect(&enrolled.connector(), out).await?;
    let mut engine = engine(home, &enrolled, &name, &meta, conn.clone(), out)?;
    let started = Instant::now();
    let result = engine.restore(&rel, &version).await;
    engine.connection().close().await;
    let report = result.with_context(|| format!("cannot restore {rel}"))?;
    home.index
        .set_last_sync(meta.vault, crate::output::unix_now())?;
    report_sync(out, &name, meta.vault, &report, started.elapsed(), None);
    Ok(())
}

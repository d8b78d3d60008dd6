//! `dooz sync [VAULT]` and `dooz status [VAULT]` (`--watch` is in `watch.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use dooz_client::{
    Connection, Connector, Engine, EngineError, EngineOptions, NetError, SyncReport, Trigger,
    VaultMeta, keyring_from_index, maintain_keys,
};
use dooz_crypto::VaultId;
use serde_json::json;

use crate::home::{Enrolled, Opened};
use crate::output::{Out, bytes, peak_rss_bytes, unix_now, utc_time};

/// How long an unreachable server is retried before giving up.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// First and longest pause between tries.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection attempt slower than this is reported as "server unreachable, retrying".
const SLOW_CONNECT: Duration = Duration::from_secs(3);

/// Prints "server unreachable, retrying" once per run, however many retries follow.
static ANNOUNCED: AtomicBool = AtomicBool::new(false);

fn announce_retry(out: &Out, server: &str, error: &dyn std::fmt::Display, patient: bool) {
    tracing::debug!(%error, "retrying");
    if !ANNOUNCED.swap(true, Ordering::Relaxed) {
        let how_long = if patient {
            "until it answers; Ctrl-C to stop".to_owned()
        } else {
            format!("for up to {} s", RETRY_FOR.as_secs())
        };
        out.warn(&format!(
            "server unreachable, retrying ({how_long}): {server}"
        ));
    }
}

fn gave_up(server: &str, e: impl Into<anyhow::Error>) -> anyhow::Error {
    e.into().context(format!(
        "gave up reaching the server at {server} after {} s; check that it is running and \
         reachable, then run the command again",
        RETRY_FOR.as_secs()
    ))
}

/// Connects, retrying retryable failures with back-off for up to [`RETRY_FOR`].
pub(crate) async fn connect(connector: &Connector, out: &Out) -> anyhow::Result<Connection> {
    connect_retrying(connector, out, false).await
}

/// Connects, retrying retryable failures with back-off: for up to [`RETRY_FOR`], or for as
/// long as it takes if `patient` (watch mode, which the caller stops on Ctrl-C).
pub(crate) async fn connect_retrying(
    connector: &Connector,
    out: &Out,
    patient: bool,
) -> anyhow::Result<Connection> {
    let started = Instant::now();
    let mut delay = FIRST_BACKOFF;
    loop {
        // A server that is down does not answer: the attempt waits for the handshake to time
        // out. Say so early rather than sit silent.
        let attempt = connector.connect();
        tokio::pin!(attempt);
        let result = tokio::select! {
            result = &mut attempt => result,
            () = tokio::time::sleep(SLOW_CONNECT) => {
                announce_retry(out, connector.server_addr(), &"no answer yet", patient);
                attempt.await
            }
        };
        match result {
            Ok(conn) => return Ok(conn),
            Err(e) if e.is_retryable() && (patient || started.elapsed() < RETRY_FOR) => {
                announce_retry(out, connector.server_addr(), &e, patient);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(e) if e.is_retryable() => return Err(gave_up(connector.server_addr(), e)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One sync of `engine`'s vault through [`Engine::sync_with_reconnect`] (which reconnects a
/// lost connection), retried with back-off while the failure is retryable, for up to
/// [`RETRY_FOR`] since the first failure.
async fn sync_retrying(
    engine: &mut Engine,
    connector: &Connector,
    out: &Out,
) -> Result<SyncReport, EngineError> {
    let mut failing_since: Option<Instant> = None;
    let mut delay = FIRST_BACKOFF;
    loop {
        match engine.sync_with_reconnect(connector, 1).await {
            Ok(report) => return Ok(report),
            Err(e)
                if e.is_retryable()
                    && failing_since.get_or_insert_with(Instant::now).elapsed() < RETRY_FOR =>
            {
                announce_retry(out, connector.server_addr(), &e, false);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The vaults to sync: every bound one, or the one named.
fn selected(home: &Opened, vault: Option<&str>) -> anyhow::Result<Vec<(String, VaultMeta)>> {
    let bound = home.index.vaults()?;
    match vault {
        Some(name) => {
            let id = home.vault(name)?;
            let meta = bound.into_iter().find(|m| m.vault == id).ok_or_else(|| {
                anyhow!("vault {name:?} is not bound to a folder on this device: run `dooz add {name} DIR`")
            })?;
            Ok(vec![(name.to_owned(), meta)])
        }
        None => {
            if bound.is_empty() {
                bail!(
                    "no vault is bound to a folder on this device, so there is nothing to sync: \
                     `dooz vault create NAME --folder DIR`, `dooz vault join CODE --folder DIR` \
                     or `dooz add VAULT DIR`"
                );
            }
            bound
                .into_iter()
                .map(|m| Ok((home.vault_name(m.vault)?, m)))
                .collect()
        }
    }
}

/// Whether a connection failure means the device cannot sync until a person acts (not
/// enrolled, revoked, another server, broken local set-up).
pub(crate) fn is_fatal_net(e: &NetError) -> bool {
    matches!(
        e,
        NetError::NotEnrolled { .. }
            | NetError::Revoked { .. }
            | NetError::ServerCertMismatch { .. }
            | NetError::Setup { .. }
    )
}

/// [`is_fatal_net`] for a sync failure.
pub(crate) fn is_fatal(e: &EngineError) -> bool {
    matches!(e, EngineError::Net(n) if is_fatal_net(n))
}

/// `dooz sync [VAULT] [--watch]`.
pub(crate) async fn sync(
    home: &Opened,
    vault: Option<&str>,
    watch: bool,
    out: &Out,
) -> anyhow::Result<()> {
    let enrolled = home.enrolled()?;
    let vaults = selected(home, vault)?;
    let connector = enrolled.connector();
    if watch {
        return crate::watch::watch(home, &enrolled, &vaults, connector, out).await;
    }
    let mut conn = connect(&connector, out).await?;
    maintain(home, &enrolled, &conn, out).await;
    let mut failed = 0;
    for (name, meta) in &vaults {
        match sync_vault(home, &enrolled, &connector, name, meta, &mut conn, out).await {
            Ok(()) => {}
            Err(e) if e.downcast_ref::<EngineError>().is_some_and(is_fatal) => {
                conn.close().await;
                return Err(e);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    conn.close().await;
    match failed {
        0 => Ok(()),
        n => Err(anyhow!(
            "{n} of {} vaults did not sync (see above); fix what the messages say and run \
             `dooz sync` again",
            vaults.len()
        )),
    }
}

/// Keeps the vault keys current before a sync ([`maintain_keys`]): rotates the vaults the
/// server marks due after a revocation and takes the keys other devices rotated to. A failure
/// is a warning: the sync goes on with the keys this device has, and the next run tries again.
pub(crate) async fn maintain(home: &Opened, enrolled: &Enrolled, conn: &Connection, out: &Out) {
    let report = match maintain_keys(conn, &enrolled.record.keys, &home.index).await {
        Ok(report) => report,
        Err(e) => {
            out.warn(&format!(
                "could not bring the vault keys up to date ({e}); syncing with the keys this \
                 device has"
            ));
            return;
        }
    };
    let name = |vault: VaultId| home.vault_name(vault).unwrap_or_else(|_| vault.to_string());
    if report.distrusted > 0 {
        out.hint(&format!(
            "stopped trusting {} revoked device(s)",
            report.distrusted
        ));
    }
    for (vault, epoch) in &report.rotated {
        out.hint(&format!(
            "{}: a device was revoked, so this device made a new key (epoch {}) and wrapped it \
             to the devices it trusts; the revoked device cannot read what is written from now on",
            name(*vault),
            epoch.0
        ));
    }
    for (vault, epoch) in &report.received {
        out.hint(&format!(
            "{}: received the vault's new key (epoch {}) from a trusted device",
            name(*vault),
            epoch.0
        ));
    }
}

/// An engine for the vault `name` over `conn`, reporting progress to bars when they are shown.
pub(crate) fn engine(
    home: &Opened,
    enrolled: &Enrolled,
    name: &str,
    meta: &VaultMeta,
    conn: Connection,
    out: &Out,
) -> anyhow::Result<Engine> {
    let keyring = keyring_from_index(&home.index, meta.vault)
        .with_context(|| format!("cannot sync vault {name:?}"))?;
    let mut engine = Engine::new(
        home.index.vault(meta.vault)?,
        keyring,
        conn,
        enrolled.record.device_name.clone(),
        EngineOptions::default(),
    )?;
    engine.set_progress(crate::progress::sink(out, name));
    Ok(engine)
}

/// Syncs one vault and reports it.
async fn sync_vault(
    home: &Opened,
    enrolled: &Enrolled,
    connector: &Connector,
    name: &str,
    meta: &VaultMeta,
    conn: &mut Connection,
    out: &Out,
) -> anyhow::Result<()> {
    let mut engine = engine(home, enrolled, name, meta, conn.clone(), out)?;
    let started = Instant::now();
    let result = sync_retrying(&mut engine, connector, out).await;
    *conn = engine.connection().clone();
    let report = result
        .map_err(|e| anyhow::Error::new(e).context(format!("vault {name:?} did not sync")))?;
    home.index.set_last_sync(meta.vault, unix_now())?;
    report_sync(out, name, meta.vault, &report, started.elapsed(), None);
    Ok(())
}

/// Whether a sync changed anything (sent, received or a conflict).
pub(crate) fn did_something(r: &SyncReport) -> bool {
    r.committed > 0 || r.applied > 0 || r.conflicts > 0
}

/// Prints a sync report: a line for people, or with `--json` one object with the
/// [`SyncReport`] fields, `vault`, `id`, `elapsed_ms` and `peak_rss_bytes` (and `trigger` in
/// watch mode).
pub(crate) fn report_sync(
    out: &Out,
    name: &str,
    vault: VaultId,
    r: &SyncReport,
    elapsed: Duration,
    trigger: Option<Trigger>,
) {
    let mut value = json!({
        "vault": name,
        "id": vault.to_string(),
        "committed": r.committed,
        "chunks_uploaded": r.chunks_uploaded,
        "bytes_uploaded": r.bytes_uploaded,
        "chunks_skipped": r.chunks_skipped,
        "commit_conflicts": r.commit_conflicts,
        "changed_during_upload": r.changed_during_upload,
        "applied": r.applied,
        "changed_locally": r.changed_locally,
        "chunks_downloaded": r.chunks_downloaded,
        "chunks_reused": r.chunks_reused,
        "conflicts": r.conflicts,
        "missing_on_server": r.missing_on_server,
        "rounds": r.rounds,
        "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    if let (Some(trigger), Some(object)) = (trigger, value.as_object_mut()) {
        object.insert("trigger".to_owned(), trigger.name().into());
    }
    out.emit(value, || describe(name, r, elapsed));
}

fn describe(name: &str, r: &SyncReport, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if r.committed == 0 && r.applied == 0 && r.conflicts == 0 {
        return format!("{name}: up to date ({secs:.1} s)");
    }
    let mut parts = Vec::new();
    if r.committed > 0 {
        parts.push(format!(
            "sent {} ({}, {})",
            plural(r.committed, "change"),
            plural(r.chunks_uploaded, "chunk"),
            bytes(r.bytes_uploaded)
        ));
    }
    if r.applied > 0 {
        parts.push(format!(
            "received {} ({} downloaded, {} reused)",
            plural(r.applied, "change"),
            plural(r.chunks_downloaded, "chunk"),
            r.chunks_reused
        ));
    }
    if r.conflicts > 0 {
        parts.push(format!(
            "{} (both versions kept)",
            plural(r.conflicts, "conflict")
        ));
    }
    format!("{name}: {} ({secs:.1} s)", parts.join(", "))
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `dooz status [VAULT]`.
pub(crate) fn status(home: &Opened, vault: Option<&str>, out: &Out) -> anyhow::Result<()> {
    let device = home.device()?;
    match &device {
        None => {
            out.emit(
                json!({ "device": null, "enrolled": false, "home": home.dir.to_string_lossy() }),
                || format!("no device set up in {}", home.dir.display()),
            );
            out.hint("next: `dooz enroll <code>` (or `dooz init` to only make the keys)");
            return Ok(());
        }
        Some(record) => {
            let enrolled = record.server_addr != crate::home::NOT_ENROLLED_ADDR;
            let id = record.keys.device_id();
            out.emit(
                json!({
                    "device": id.to_string(),
                    "name": record.device_name,
                    "enrolled": enrolled,
                    "server": enrolled.then_some(&record.server_addr),
                    "home": home.dir.to_string_lossy(),
                }),
                || {
                    let server = if enrolled {
                        format!("enrolled on {}", record.server_addr)
                    } else {
                        "not enrolled: run `dooz enroll <code>`".to_owned()
                    };
                    format!("device {id} ({:?}), {server}", record.device_name)
                },
            );
        }
    }
    let names = match vault {
        Some(name) => vec![(name.to_owned(), home.vault(name)?)],
        None => home.index.vault_names()?,
    };
    let bound = home.index.vaults()?;
    for (name, id) in names {
        let meta = bound.iter().find(|m| m.vault == id);
        let last_sync = home.index.last_sync(id)?;
        let (pending, local_changes) = match meta {
            Some(_) => {
                let v = home.index.vault(id)?;
                (
                    Some(v.pending_uploads()?.len()),
                    Some(v.local_changes()?.len()),
                )
            }
            None => (None, None),
        };
        out.emit(
            json!({
                "vault": name,
                "id": id.to_string(),
                "folder": meta.map(|m| m.root.to_string_lossy()),
                "cursor": meta.map(|m| m.cursor.get()),
                "pending_uploads": pending,
                "local_changes": local_changes,
                "last_sync": last_sync,
            }),
            || {
                let mut s = format!("vault {name} ({id})\n");
                match meta {
                    Some(m) => {
                        s.push_str(&format!("  folder:          {}\n", m.root.display()));
                        s.push_str(&format!("  cursor:          {}\n", m.cursor));
                        s.push_str(&format!(
                            "  pending uploads: {} (interrupted: {}; changes seen by the last scan: {})\n",
                            pending.unwrap_or(0) + local_changes.unwrap_or(0),
                            pending.unwrap_or(0),
                            local_changes.unwrap_or(0)
                        ));
                    }
                    None => s.push_str(&format!(
                        "  folder:          none (`dooz add {name} DIR`)\n"
                    )),
                }
                let last = last_sync.map_or_else(|| "never".to_owned(), utc_time);
                s.push_str(&format!("  last sync:       {last}"));
                s
            },
        );
    }
    Ok(())
}

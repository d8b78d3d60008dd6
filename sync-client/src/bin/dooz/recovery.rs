//! `dooz recovery setup` and `dooz recover <WORDS...>`: the account's recovery secret (see
//! `dooz_client::set_up_recovery`).

use anyhow::Context as _;
use dooz_client::{Connection, parse_recovery_words, recover as recover_vaults, set_up_recovery};
use serde_json::json;

use crate::home::Opened;
use crate::output::Out;
use crate::sync::connect;

/// Shows fresh recovery words (once), or says the vaults are wrapped to the existing secret.
pub(crate) async fn show_setup(home: &Opened, conn: &Connection, out: &Out) -> anyhow::Result<()> {
    let words = set_up_recovery(conn, &home.index)
        .await
        .context("cannot set up recovery")?;
    match words {
        Some(words) => {
            out.emit(json!({ "recovery_words": words.as_str() }), || {
                format!("recovery words (shown once):\n\n    {}\n", words.as_str())
            });
            out.hint(
                "write these 12 words down and keep them offline: with them, `dooz recover` on a \
                 new device regains every vault if all your devices are lost. Whoever has them \
                 can read your vaults. They are not shown again.",
            );
        }
        None => out.emit(json!({ "recovery": "up to date" }), || {
            "every vault key on this device is wrapped to the account's recovery secret".to_owned()
        }),
    }
    Ok(())
}

/// `dooz recovery setup`.
pub(crate) async fn setup(home: &Opened, out: &Out) -> anyhow::Result<()> {
    let enrolled = home.enrolled()?;
    let conn = connect(&enrolled.connector(), out).await?;
    let shown = show_setup(home, &conn, out).await;
    conn.close().await;
    shown
}

/// `dooz recover <WORDS...>`.
pub(crate) async fn recover(home: &Opened, words: &[String], out: &Out) -> anyhow::Result<()> {
    let secret = parse_recovery_words(&words.join(" "))?;
    let enrolled = home.enrolled()?;
    let conn = connect(&enrolled.connector(), out).await?;
    let result = recover_vaults(&conn, &secret, &home.index).await;
    conn.close().await;
    for v in result? {
        out.emit(
            json!({ "vault": v.name, "id": v.vault.to_string(), "epochs": v.epochs.len() }),
            || format!("recovered vault {:?} ({})", v.name, v.vault),
        );
    }
    out.hint("next: bind each vault to a folder with `dooz add NAME DIR`, then `dooz sync`");
    Ok(())
}

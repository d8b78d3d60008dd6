//! `dooz pair invite` and `dooz pair join <CODE>`: hand every vault key to a new device of the
//! account without trusting the server (see `dooz_client::Invitation`).

use anyhow::Context as _;
use dooz_client::{Invitation, Joining, PairingCode};
use serde_json::json;

use crate::home::Opened;
use crate::output::Out;
use crate::sync::connect;

/// `dooz pair invite`: opens a pairing, prints the code, waits for the new device and hands
/// it every vault key this device holds.
pub(crate) async fn invite(home: &Opened, out: &Out) -> anyhow::Result<()> {
    let enrolled = home.enrolled()?;
    let keys = &enrolled.record.keys;
    let conn = connect(&enrolled.connector(), out).await?;
    let invitation = Invitation::open(&conn, keys)
        .await
        .context("cannot open a pairing on the server")?;
    let code = invitation.code().encode();
    out.emit(
        json!({ "event": "code", "code": code.as_str(), "expires_in_secs": 900 }),
        || code.as_str().to_owned(),
    );
    if let Some(qr) = qr(code.as_str()) {
        out.hint(&qr);
    }
    out.hint(
        "on the new device (enrolled in this account), run:\n    dooz pair join <code>\nThe \
         code works once, for 15 minutes. Waiting for the new device...",
    );
    let spinner = out.spinner("waiting for the new device".to_owned());
    let paired = invitation.complete(&conn, keys, &home.index).await;
    drop(spinner);
    conn.close().await;
    let paired = paired?;
    out.emit(
        json!({
            "event": "paired",
            "device": paired.device.to_string(),
            "name": paired.name,
            "vaults": paired.vaults.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        }),
        || {
            format!(
                "paired with {:?} ({}): handed over {} vault(s)",
                paired.name,
                paired.device,
                paired.vaults.len()
            )
        },
    );
    Ok(())
}

/// `dooz pair join <CODE>`: answers a code from `dooz pair invite` and keeps the vault keys,
/// after checking each came from the device that showed the code.
pub(crate) async fn join(home: &Opened, code: &str, out: &Out) -> anyhow::Result<()> {
    let code: PairingCode = code.parse()?;
    let enrolled = home.enrolled()?;
    let keys = &enrolled.record.keys;
    let conn = connect(&enrolled.connector(), out).await?;
    let spinner = out.spinner("waiting for the inviting device".to_owned());
    let result = async {
        Joining::post(&conn, keys, code, &enrolled.record.device_name)
            .await?
            .finish(&conn, keys, &home.index)
            .await
    }
    .await;
    drop(spinner);
    conn.close().await;
    let vaults = result?;
    for v in &vaults {
        let name = home.vault_name(v.vault)?;
        out.emit(
            json!({ "vault": name, "id": v.vault.to_string(), "epochs": v.epochs.len() }),
            || format!("received vault {name:?} ({})", v.vault),
        );
    }
    out.hint("next: bind a folder with `dooz add NAME DIR`, then `dooz sync NAME`");
    Ok(())
}

/// The code as a QR code drawn with Unicode half blocks, for a phone camera; `None` if it does
/// not fit (it always does: a pairing code is under 100 bytes).
fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.to_uppercase().as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

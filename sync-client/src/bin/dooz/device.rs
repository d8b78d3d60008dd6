//! `dooz init` and `dooz enroll`: this device's keys and its enrolment on a server.

use anyhow::{Context as _, bail};
use dooz_client::{
    Connection, DeviceRecord, EnrolmentCode, default_device_name, is_usable_device_name,
    server_fingerprint_hex,
};
use dooz_crypto::DeviceSecretKeys;
use dooz_protocol::limits::MAX_NAME_LEN;
use serde_json::json;

use crate::home::{NOT_ENROLLED_ADDR, Opened, copy_keys};
use crate::output::Out;

fn check_device_name(name: &str) -> anyhow::Result<()> {
    if !is_usable_device_name(name) {
        bail!(
            "{name:?} is not a usable device name: use 1 to {MAX_NAME_LEN} bytes of text without \
             control characters"
        );
    }
    Ok(())
}

/// The device record, made (not enrolled) if there is none; `name` renames the device.
/// Returns the record and whether it was made now.
fn ensure_device(home: &Opened, name: Option<String>) -> anyhow::Result<(DeviceRecord, bool)> {
    if let Some(name) = &name {
        check_device_name(name)?;
    }
    match home.device()? {
        Some(mut record) => {
            if let Some(name) = name
                && name != record.device_name
            {
                record.device_name = name;
                home.index.set_device(&record)?;
            }
            Ok((record, false))
        }
        None => {
            let keys = DeviceSecretKeys::generate().context("cannot make the device's keys")?;
            let record = DeviceRecord {
                server_addr: NOT_ENROLLED_ADDR.to_owned(),
                server_fingerprint: [0; 32],
                device_name: name.unwrap_or_else(default_device_name),
                keys,
            };
            home.index.set_device(&record)?;
            Ok((record, true))
        }
    }
}

fn is_enrolled(record: &DeviceRecord) -> bool {
    record.server_addr != NOT_ENROLLED_ADDR
}

/// `dooz init [--name NAME]`.
pub(crate) fn init(home: &Opened, name: Option<String>, out: &Out) -> anyhow::Result<()> {
    let (record, created) = ensure_device(home, name)?;
    let device = record.keys.device_id();
    let enrolled = is_enrolled(&record);
    out.emit(
        json!({
            "device": device.to_string(),
            "name": record.device_name,
            "created": created,
            "enrolled": enrolled,
            "server": enrolled.then_some(&record.server_addr),
            "home": home.dir.to_string_lossy(),
        }),
        || {
            let what = if created {
                "made keys for"
            } else {
                "already set up:"
            };
            format!("{what} device {device} ({:?})", record.device_name)
        },
    );
    if enrolled {
        out.hint(&format!("enrolled on {}", record.server_addr));
    } else {
        out.hint(
            "next: enrol it with `dooz enroll <code>` (a code from `dooz-server admin enrol-code`)",
        );
    }
    Ok(())
}

/// `dooz enroll <CODE> [--name NAME]`.
pub(crate) async fn enroll(
    home: &Opened,
    code: &str,
    name: Option<String>,
    out: &Out,
) -> anyhow::Result<()> {
    let code: EnrolmentCode = code.parse()?;
    let (mut record, _) = ensure_device(home, name)?;
    if is_enrolled(&record)
        && record.server_fingerprint != code.fingerprint
        && !home.index.vault_names()?.is_empty()
    {
        bail!(
            "this device is enrolled on another server ({}, certificate {}) and has vaults there; \
             to use the server in this code, give dooz another home: `dooz --home DIR enroll <code>`",
            record.server_addr,
            server_fingerprint_hex(&record.server_fingerprint)
        );
    }
    let spinner = out.spinner(format!("enrolling on {}", code.address));
    let hello = Connection::enrol(&code, &copy_keys(&record.keys), &record.device_name)
        .await
        .with_context(|| format!("cannot enrol on {}", code.address))?;
    drop(spinner);
    record.server_addr = code.address.clone();
    record.server_fingerprint = code.fingerprint;
    home.index.set_device(&record)?;
    let device = record.keys.device_id();
    out.emit(
        json!({
            "device": device.to_string(),
            "name": record.device_name,
            "server": record.server_addr,
            "tenant": hello.tenant,
            "account": hello.account,
        }),
        || {
            format!(
                "enrolled device {device} ({:?}) in account {:?} on {}",
                record.device_name, hello.account, record.server_addr
            )
        },
    );
    out.hint(
        "next: create a vault with `dooz vault create NAME --folder DIR`, or join one from another \
         device of your account with `dooz vault join CODE --folder DIR`",
    );
    Ok(())
}

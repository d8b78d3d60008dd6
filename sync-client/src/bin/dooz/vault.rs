//! `dooz vault create|list|invite|join` and `dooz add`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use dooz_client::{IndexError, VaultCode};
use dooz_crypto::{Epoch, VaultId, VaultKey};
use serde_json::json;

use crate::home::{Opened, check_vault_name, prepare_folder};
use crate::output::Out;
use crate::sync::connect;

/// How long `vault join` waits for the server to confirm the vault before going on without.
const JOIN_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

fn protocol_id(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

/// Binds `vault` to `dir` (made if missing); already bound there is fine.
fn bind(
    home: &Opened,
    vault: VaultId,
    name: &str,
    dir: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    let root = prepare_folder(dir)?;
    match home.index.add_vault(vault, &root) {
        Ok(_) => Ok(root),
        Err(IndexError::VaultExists { root: existing, .. }) if existing == root => Ok(root),
        Err(IndexError::VaultExists { root: existing, .. }) => bail!(
            "vault {name:?} is already bound to {} on this device; sync that folder, or use \
             another home (--home) for a second copy",
            existing.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// `dooz vault create <NAME> [--folder DIR]`.
pub(crate) async fn create(
    home: &Opened,
    name: &str,
    folder: Option<&Path>,
    out: &Out,
) -> anyhow::Result<()> {
    check_vault_name(name)?;
    if let Some(existing) = home.index.vault_by_name(name)? {
        bail!(
            "a vault named {name:?} exists already on this device ({existing}); pick another \
             name, or see `dooz vault list`"
        );
    }
    let enrolled = home.enrolled()?;
    let vault = VaultId::generate().context("cannot make a vault id")?;
    let key = VaultKey::generate().context("cannot make a vault key")?;
    let spinner = out.spinner(format!("creating vault {name:?}"));
    let conn = connect(&enrolled.connector(), out).await?;
    let first = conn
        .list_vaults()
        .await
        .context("cannot list the account's vaults")?
        .is_empty();
    conn.create_vault(protocol_id(vault))
        .await
        .with_context(|| format!("cannot create vault {name:?} on the server"))?;
    drop(spinner);
    home.index.put_vault_key(vault, Epoch::FIRST, &key)?;
    home.index.set_vault_name(name, vault)?;
    let root = folder.map(|dir| bind(home, vault, name, dir)).transpose();
    let root = match root {
        Ok(root) => root,
        Err(e) => {
            conn.close().await;
            return Err(e);
        }
    };
    out.emit(
        json!({
            "vault": name,
            "id": vault.to_string(),
            "folder": root.as_deref().map(Path::to_string_lossy),
        }),
        || match &root {
            Some(root) => format!(
                "created vault {name:?} ({vault}), bound to {}",
                root.display()
            ),
            None => format!("created vault {name:?} ({vault})"),
        },
    );
    // The account's first vault makes the recovery secret (its words follow the vault's
    // line); later vaults are wrapped to the secret this device keeps.
    let recovery = if first {
        crate::recovery::show_setup(home, &conn, out).await
    } else if let Some(secret) = home.index.recovery_secret()? {
        dooz_client::wrap_vault_to_recovery(&conn, &secret, vault, Epoch::FIRST, &key)
            .await
            .context("cannot wrap the new vault's key to the recovery secret")
    } else {
        Ok(())
    };
    conn.close().await;
    // The vault exists either way; recovery can be set up again later.
    if let Err(e) = recovery {
        out.warn(&format!(
            "{e:#}; the vault was created, but its key is not yet wrapped to a recovery secret: \
             run `dooz recovery setup` once the server allows it"
        ));
    }
    if root.is_some() {
        out.hint(&format!(
            "next: `dooz sync {name}`; to add another device of your account: `dooz pair invite`"
        ));
    } else {
        out.hint(&format!(
            "next: bind a folder with `dooz add {name} DIR`, then `dooz sync {name}`"
        ));
    }
    Ok(())
}

/// `dooz vault list`.
pub(crate) fn list(home: &Opened, out: &Out) -> anyhow::Result<()> {
    let names = home.index.vault_names()?;
    let bound = home.index.vaults()?;
    if names.is_empty() {
        out.hint(
            "no vaults yet: create one with `dooz vault create NAME --folder DIR`, or join one \
             with `dooz vault join CODE --folder DIR`",
        );
    }
    for (name, vault) in names {
        let meta = bound.iter().find(|m| m.vault == vault);
        let epochs = home.index.vault_keys(vault)?.len();
        out.emit(
            json!({
                "vault": name,
                "id": vault.to_string(),
                "folder": meta.map(|m| m.root.to_string_lossy()),
                "cursor": meta.map(|m| m.cursor.get()),
                "keys": epochs,
            }),
            || {
                let folder = meta.map_or_else(
                    || "(no folder: `dooz add NAME DIR`)".to_owned(),
                    |m| m.root.display().to_string(),
                );
                format!("{name}\t{vault}\t{folder}")
            },
        );
    }
    Ok(())
}

/// `dooz vault invite <NAME>`.
pub(crate) fn invite(home: &Opened, name: &str, out: &Out) -> anyhow::Result<()> {
    let vault = home.vault(name)?;
    let keys = home.index.vault_keys(vault)?;
    if keys.is_empty() {
        bail!("this device holds no key for vault {name:?}, so it cannot invite another device");
    }
    let code = VaultCode::new(vault, name, keys)?;
    let text = code.encode();
    out.emit(
        json!({ "vault": name, "id": vault.to_string(), "code": text.as_str() }),
        || text.as_str().to_owned(),
    );
    out.hint(
        "this code holds the vault's keys: whoever has it can read the vault. Give it only to \
         your own devices, over a channel you trust, and run there:\n    dooz vault join <code> \
         --folder DIR",
    );
    Ok(())
}

/// `dooz vault join <CODE> --folder DIR [--name NAME]`.
pub(crate) async fn join(
    home: &Opened,
    code: &str,
    folder: &Path,
    name: Option<String>,
    out: &Out,
) -> anyhow::Result<()> {
    let code: VaultCode = code.parse()?;
    let vault = code.vault();
    let name = match name {
        Some(name) => name,
        None if !code.name().is_empty() => code.name().to_owned(),
        None => format!("vault-{}", &vault.to_string()[..8]),
    };
    check_vault_name(&name)?;
    if let Some(other) = home.index.vault_by_name(&name)?
        && other != vault
    {
        bail!(
            "this device already has another vault named {name:?} ({other}); choose a name for \
             this one with `--name NAME`"
        );
    }
    let enrolled = home.enrolled()?;
    // Check that the account has the vault, so a code from another account fails now rather
    // than at the first sync. A server that is down does not stop the join.
    let spinner = out.spinner("checking the vault with the server".to_owned());
    let check = tokio::time::timeout(JOIN_CHECK_TIMEOUT, async {
        let conn = enrolled.connector().connect().await?;
        let vaults = conn.list_vaults().await;
        conn.close().await;
        vaults
    })
    .await;
    drop(spinner);
    match check {
        Ok(Ok(vaults)) => {
            if !vaults.iter().any(|v| v.vault == protocol_id(vault)) {
                bail!(
                    "vault {vault} is not in this device's account on {}: the code comes from a \
                     device of another account, or the vault was deleted. Enrol this device in \
                     the inviting device's account, or ask for a new code",
                    enrolled.record.server_addr
                );
            }
        }
        Ok(Err(e)) if !e.is_retryable() => {
            return Err(e).context("cannot check the vault with the server");
        }
        Ok(Err(e)) => out.warn(&format!(
            "could not check the vault with the server ({e}); joining anyway, the first sync will tell"
        )),
        Err(_) => out.warn(
            "the server did not answer in time; joining anyway, the first sync will check the vault",
        ),
    }
    for (epoch, key) in code.keys() {
        home.index.put_vault_key(vault, *epoch, key)?;
    }
    home.index.set_vault_name(&name, vault)?;
    let root = bind(home, vault, &name, folder)?;
    out.emit(
        json!({ "vault": name, "id": vault.to_string(), "folder": root.to_string_lossy() }),
        || {
            format!(
                "joined vault {name:?} ({vault}), bound to {}",
                root.display()
            )
        },
    );
    out.hint(&format!("next: `dooz sync {name}`"));
    Ok(())
}

/// `dooz add <VAULT> <DIR>`.
pub(crate) fn add(home: &Opened, name: &str, dir: &Path, out: &Out) -> anyhow::Result<()> {
    let vault = home.vault(name)?;
    if home.index.vault_keys(vault)?.is_empty() {
        bail!(
            "this device holds no key for vault {name:?}; join it with a code from `dooz vault \
             invite {name}` on a device that has it"
        );
    }
    let root = bind(home, vault, name, dir)?;
    out.emit(
        json!({ "vault": name, "id": vault.to_string(), "folder": root.to_string_lossy() }),
        || format!("bound vault {name:?} to {}", root.display()),
    );
    out.hint(&format!("next: `dooz sync {name}`"));
    Ok(())
}

//! The home directory: where this device's index lives, and the lookups every command needs
//! (the device record, vault names).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use dooz_client::{Connector, DeviceRecord, Index, IndexError};
use dooz_crypto::{DeviceSecretKeys, VaultId};

/// Directory of the index inside the home.
const INDEX_DIR: &str = "index";

/// A device record with this server address is a device that ran `init` but not `enroll`.
pub(crate) use dooz_client::NOT_ENROLLED_ADDR;

/// The message for a device that has not enrolled.
pub(crate) const ENROL_HINT: &str = "this device is not enrolled with a server yet: run `dooz \
     enroll <code>` with an enrolment code from the server's admin (`dooz-server admin enrol-code`)";

/// Where the state lives, before it is opened.
#[derive(Debug)]
pub(crate) struct Home {
    dir: PathBuf,
}

impl Home {
    /// `--home` (or `$DOOZ_HOME`, which clap reads into it), else `$XDG_DATA_HOME/dooz`, else
    /// `~/.local/share/dooz`.
    pub(crate) fn resolve(flag: Option<PathBuf>) -> anyhow::Result<Self> {
        let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match flag {
            Some(dir) => dir,
            None => match nonempty("XDG_DATA_HOME") {
                Some(data) => PathBuf::from(data).join("dooz"),
                None => match nonempty("HOME") {
                    Some(home) => PathBuf::from(home).join(".local/share/dooz"),
                    None => bail!(
                        "cannot find a home directory for dooz's state: neither $HOME nor \
                         $XDG_DATA_HOME is set; pass --home DIR or set $DOOZ_HOME"
                    ),
                },
            },
        };
        Ok(Self { dir })
    }

    /// Creates the directory (private to the user: it holds secret keys) and opens the index.
    pub(crate) fn open(self) -> anyhow::Result<Opened> {
        dooz_client::create_private_dir(&self.dir)
            .with_context(|| format!("cannot create the dooz home {}", self.dir.display()))?;
        let index = Index::open(self.dir.join(INDEX_DIR))?;
        Ok(Opened {
            dir: self.dir,
            index,
        })
    }
}

/// An opened home.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) dir: PathBuf,
    pub(crate) index: Index,
}

/// An enrolled device: its record and how to reach its server.
#[derive(Debug)]
pub(crate) struct Enrolled {
    pub(crate) record: DeviceRecord,
}

impl Enrolled {
    /// A connector to the device's server.
    pub(crate) fn connector(&self) -> Connector {
        Connector::new(
            self.record.server_addr.clone(),
            self.record.server_fingerprint,
            copy_keys(&self.record.keys),
        )
    }
}

/// A second handle on the same secret keys.
pub(crate) fn copy_keys(keys: &DeviceSecretKeys) -> DeviceSecretKeys {
    DeviceSecretKeys::from_bytes(&keys.to_bytes())
}

impl Opened {
    /// The device record, if `init` or `enroll` ran.
    pub(crate) fn device(&self) -> Result<Option<DeviceRecord>, IndexError> {
        self.index.device()
    }

    /// The device record of an enrolled device, or an error saying to enrol.
    pub(crate) fn enrolled(&self) -> anyhow::Result<Enrolled> {
        match self.device()? {
            Some(record) if record.server_addr != NOT_ENROLLED_ADDR => Ok(Enrolled { record }),
            _ => Err(anyhow!(ENROL_HINT)),
        }
    }

    /// The vault named `name` on this device (or whose id is `name`), or an error listing the
    /// known names.
    pub(crate) fn vault(&self, name: &str) -> anyhow::Result<VaultId> {
        if let Some(id) = self.index.vault_by_name(name)? {
            return Ok(id);
        }
        let names = self.index.vault_names()?;
        if let Ok(id) = name.parse::<VaultId>()
            && names.iter().any(|(_, v)| *v == id)
        {
            return Ok(id);
        }
        if names.is_empty() {
            bail!(
                "no vault named {name:?} on this device, and it knows no vaults yet: create one \
                 with `dooz vault create NAME --folder DIR`, or join one with `dooz vault join \
                 CODE --folder DIR`"
            );
        }
        let known: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "no vault named {name:?} on this device; the known vaults are: {} (see `dooz vault \
             list`)",
            known.join(", ")
        )
    }

    /// The name of `vault` on this device (its id if it has none).
    pub(crate) fn vault_name(&self, vault: VaultId) -> anyhow::Result<String> {
        Ok(self
            .index
            .vault_names()?
            .into_iter()
            .find(|(_, v)| *v == vault)
            .map_or_else(|| vault.to_string(), |(n, _)| n))
    }
}

/// Checks a vault name: 1 to 255 bytes (it travels in vault codes), no control characters.
pub(crate) fn check_vault_name(name: &str) -> anyhow::Result<()> {
    if !dooz_client::is_usable_vault_name(name) {
        bail!(
            "{name:?} is not a usable vault name: use 1 to 255 bytes of text without control \
             characters"
        );
    }
    Ok(())
}

/// Makes `dir` if needed and returns its absolute, canonical path.
pub(crate) fn prepare_folder(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let abs = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve the folder {}", dir.display()))?;
    if !abs.is_dir() {
        bail!("{} is not a folder; give a folder to sync", abs.display());
    }
    Ok(abs)
}

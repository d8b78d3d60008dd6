//! Local bookkeeping of the `dooz` CLI in the index: the names people give vaults on this
//! device (the server only knows vault ids) and when each vault last synced.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `vault-names-v1` | name (UTF-8) | `1` then the vault id (16 bytes) |
//! | `last-sync-v1` | vault id (16 bytes) | `1` then unix seconds as u64 big-endian |

use dooz_crypto::VaultId;

use super::{Index, IndexError, codec, show_key, storage};

const VAULT_NAMES_TREE: &str = "vault-names-v1";
const LAST_SYNC_TREE: &str = "last-sync-v1";

fn decode_fixed<const N: usize>(
    tree: &str,
    key: &[u8],
    value: &[u8],
) -> Result<[u8; N], IndexError> {
    match value.split_first() {
        Some((&codec::VALUE_VERSION, body)) => {
            <[u8; N]>::try_from(body).map_err(|_| IndexError::Corrupt {
                tree: tree.into(),
                key: show_key(key),
                reason: format!("value of {} bytes, expected {}", value.len(), N + 1),
            })
        }
        Some((&found, _)) => Err(IndexError::UnsupportedVersion {
            tree: tree.into(),
            key: show_key(key),
            found,
            supported: codec::VALUE_VERSION,
        }),
        None => Err(IndexError::Corrupt {
            tree: tree.into(),
            key: show_key(key),
            reason: "empty value".into(),
        }),
    }
}

fn encode_fixed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(codec::VALUE_VERSION);
    out.extend_from_slice(body);
    out
}

impl Index {
    fn names_tree(&self) -> Result<sled::Tree, IndexError> {
        self.db
            .open_tree(VAULT_NAMES_TREE)
            .map_err(storage("opening the vault names"))
    }

    fn last_sync_tree(&self) -> Result<sled::Tree, IndexError> {
        self.db
            .open_tree(LAST_SYNC_TREE)
            .map_err(storage("opening the sync times"))
    }

    /// Names `vault` `name` on this device, replacing what `name` named before. A vault may
    /// have several names. **Durable.**
    pub fn set_vault_name(&self, name: &str, vault: VaultId) -> Result<(), IndexError> {
        self.names_tree()?
            .insert(name.as_bytes(), encode_fixed(vault.as_bytes()))
            .map_err(storage("writing a vault name"))?;
        self.flush()
    }

    /// Forgets the name `name`; returns whether it existed. **Durable.**
    pub fn remove_vault_name(&self, name: &str) -> Result<bool, IndexError> {
        let existed = self
            .names_tree()?
            .remove(name.as_bytes())
            .map_err(storage("removing a vault name"))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    /// The vault named `name` on this device.
    pub fn vault_by_name(&self, name: &str) -> Result<Option<VaultId>, IndexError> {
        let Some(v) = self
            .names_tree()?
            .get(name.as_bytes())
            .map_err(storage("reading a vault name"))?
        else {
            return Ok(None);
        };
        decode_fixed::<16>(VAULT_NAMES_TREE, name.as_bytes(), &v).map(|id| Some(VaultId(id)))
    }

    /// Every vault name on this device with its vault, in name order.
    pub fn vault_names(&self) -> Result<Vec<(String, VaultId)>, IndexError> {
        let mut out = Vec::new();
        for item in self.names_tree()?.iter() {
            let (k, v) = item.map_err(storage("listing vault names"))?;
            let name = String::from_utf8(k.to_vec()).map_err(|_| IndexError::Corrupt {
                tree: VAULT_NAMES_TREE.into(),
                key: show_key(&k),
                reason: "name is not UTF-8".into(),
            })?;
            let id = decode_fixed::<16>(VAULT_NAMES_TREE, &k, &v)?;
            out.push((name, VaultId(id)));
        }
        Ok(out)
    }

    /// Records that `vault` finished a sync at `at` (unix seconds).
    pub fn set_last_sync(&self, vault: VaultId, at: u64) -> Result<(), IndexError> {
        self.last_sync_tree()?
            .insert(vault.as_bytes(), encode_fixed(&at.to_be_bytes()))
            .map_err(storage("writing the sync time"))?;
        self.flush()
    }

    /// When `vault` last finished a sync (unix seconds), if it ever did.
    pub fn last_sync(&self, vault: VaultId) -> Result<Option<u64>, IndexError> {
        let Some(v) = self
            .last_sync_tree()?
            .get(vault.as_bytes())
            .map_err(storage("reading the sync time"))?
        else {
            return Ok(None);
        };
        decode_fixed::<8>(LAST_SYNC_TREE, vault.as_bytes(), &v).map(|b| Some(u64::from_be_bytes(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sync_times_persist() {
        let dir = tempfile::tempdir().unwrap();
        let a = VaultId([1; 16]);
        let b = VaultId([2; 16]);
        {
            let index = Index::open(dir.path()).unwrap();
            assert_eq!(index.vault_by_name("photos").unwrap(), None);
            index.set_vault_name("photos", a).unwrap();
            index.set_vault_name("docs", b).unwrap();
            index.set_last_sync(a, 1_700_000_000).unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert_eq!(index.vault_by_name("photos").unwrap(), Some(a));
        assert_eq!(
            index.vault_names().unwrap(),
            vec![("docs".to_owned(), b), ("photos".to_owned(), a)]
        );
        assert_eq!(index.last_sync(a).unwrap(), Some(1_700_000_000));
        assert_eq!(index.last_sync(b).unwrap(), None);
        assert!(index.remove_vault_name("docs").unwrap());
        assert!(!index.remove_vault_name("docs").unwrap());
        assert_eq!(index.vault_names().unwrap().len(), 1);
    }

    #[test]
    fn damaged_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let tree = index.names_tree().unwrap();
        tree.insert("bad", &[1u8, 2, 3][..]).unwrap();
        tree.insert("new", &[9u8; 17][..]).unwrap();
        assert!(matches!(
            index.vault_by_name("bad"),
            Err(IndexError::Corrupt { .. })
        ));
        assert!(matches!(
            index.vault_by_name("new"),
            Err(IndexError::UnsupportedVersion { found: 9, .. })
        ));
    }
}

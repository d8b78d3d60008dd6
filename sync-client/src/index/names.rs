//! Local bookkeeping in the index: the names people give vaults on this device (the server
//! only knows vault ids), when each vault last synced, and the devices this device trusts to
//! hold vault keys (learnt by pairing, never from the server).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `vault-names-v1` | name (UTF-8) | `1` then the vault id (16 bytes) |
//! | `last-sync-v1` | vault id (16 bytes) | `1` then unix seconds as u64 big-endian |
//! | `trusted-peers-v1` | device id (32 bytes) | `1` then the device's public keys (64 bytes: Ed25519 identity ‖ X25519 exchange) |

use dooz_crypto::{DeviceId, DevicePublicKeys, VaultId};

use super::{Index, IndexError, codec, show_key, storage};

const VAULT_NAMES_TREE: &str = "vault-names-v1";
const LAST_SYNC_TREE: &str = "last-sync-v1";
const TRUSTED_PEERS_TREE: &str = "trusted-peers-v1";

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

    fn trusted_tree(&self) -> Result<sled::Tree, IndexError> {
        self.db
            .open_tree(TRUSTED_PEERS_TREE)
            .map_err(storage("opening the trusted devices"))
    }

    /// Trusts `peer` to hold this account's vault keys: key rotation wraps new keys to it and
    /// envelopes it wraps are accepted. Only pairing (which checks the peer's keys against a
    /// secret the server never sees) calls this. **Durable.**
    pub fn trust_peer(&self, peer: &DevicePublicKeys) -> Result<(), IndexError> {
        self.trusted_tree()?
            .insert(peer.device_id().as_bytes(), encode_fixed(&peer.to_bytes()))
            .map_err(storage("writing a trusted device"))?;
        self.flush()
    }

    /// Stops trusting `device` (it was revoked). Returns whether it was trusted. **Durable.**
    pub fn distrust_peer(&self, device: &DeviceId) -> Result<bool, IndexError> {
        let existed = self
            .trusted_tree()?
            .remove(device.as_bytes())
            .map_err(storage("removing a trusted device"))?
            .is_some();
        if existed {
            self.flush()?;
        }
        Ok(existed)
    }

    /// The devices this device trusts, in device-id order.
    pub fn trusted_peers(&self) -> Result<Vec<DevicePublicKeys>, IndexError> {
        let mut out = Vec::new();
        for item in self.trusted_tree()?.iter() {
            let (k, v) = item.map_err(storage("listing trusted devices"))?;
            let keys =
                DevicePublicKeys::from_bytes(&decode_fixed::<64>(TRUSTED_PEERS_TREE, &k, &v)?);
            if keys.device_id().as_bytes()[..] != k[..] {
                return Err(IndexError::Corrupt {
                    tree: TRUSTED_PEERS_TREE.into(),
                    key: show_key(&k),
                    reason: "the keys are not those of the device the key names".into(),
                });
            }
            out.push(keys);
        }
        Ok(out)
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
    fn trusted_peers_persist_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = dooz_crypto::DeviceSecretKeys::generate().unwrap().public();
        let b = dooz_crypto::DeviceSecretKeys::generate().unwrap().public();
        {
            let index = Index::open(dir.path()).unwrap();
            assert!(index.trusted_peers().unwrap().is_empty());
            index.trust_peer(&a).unwrap();
            index.trust_peer(&b).unwrap();
            index.trust_peer(&a).unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        let mut want = vec![a, b];
        want.sort_by_key(|k| *k.device_id().as_bytes());
        assert_eq!(index.trusted_peers().unwrap(), want);
        assert!(index.distrust_peer(&a.device_id()).unwrap());
        assert!(!index.distrust_peer(&a.device_id()).unwrap());
        assert_eq!(index.trusted_peers().unwrap(), vec![b]);
        // Keys filed under another device's id are refused.
        let mut value = vec![codec::VALUE_VERSION];
        value.extend_from_slice(&a.to_bytes());
        index
            .trusted_tree()
            .unwrap()
            .insert(b.device_id().as_bytes(), value)
            .unwrap();
        assert!(matches!(
            index.trusted_peers(),
            Err(IndexError::Corrupt { .. })
        ));
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

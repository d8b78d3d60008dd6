//! Pairing: an existing device hands every vault key of the account to a new device of the
//! same account, without trusting the server (design in `docs/SECURITY.md`, "Pairing"; payload
//! layouts in `docs/FORMAT.md`).
//!
//! The initiator A ([`Invitation`]) opens a slot on the server and shows a [`PairingCode`]:
//! a one-time secret `s` and A's key fingerprint. The joiner B ([`Joining`]) posts its public
//! keys to the slot, MACed with a key from `s`. A checks the MAC (so the server cannot slip in a
//! key of its own), wraps every epoch's key of every vault to B (`PutEnvelope`), and replies
//! with the list of vaults and epochs, sealed with a key from `s`. B opens each envelope and
//! accepts it only if its sender's fingerprint is the one in the code, and stores the keys only
//! if every expected envelope checked out.
//!
//! Both sides then trust each other ([`Index::trust_peer`]): key rotation wraps new keys to
//! trusted devices and accepts envelopes only from them. The reply also carries the devices
//! the inviter trusts (its own keys first, checked against the code's fingerprint), so the new
//! device trusts the devices paired before it; they learn of it through the inviter only
//! (see `docs/SECURITY.md`, "Rotation").
//!
//! ```text
//! code    = "dooz-pair1-" base32(payload) in groups of 4 joined by "-"
//! payload = secret:[u8; 16] | fingerprint:[u8; 32] | check:[u8; 4]
//!           check = first 4 bytes of BLAKE3(secret | fingerprint)
//! reply plaintext (sealed, see dooz-crypto `PairingSecret::seal_reply`):
//!   count:u16 BE | count × (vault:[u8; 16] | epochs:u16 BE | epochs × epoch:u32 BE
//!                           | name_len:u8 | name)
//!                   | peers:u16 BE | peers × keys:[u8; 64]   (identity ‖ exchange; first: the inviter)
//! ```
//!
//! Both flows are split in two steps (open/complete, post/finish) so a program can show the
//! code, or a progress line, in between.

use std::fmt;
use std::str::FromStr;

use dooz_crypto::{
    DevicePublicKeys, DeviceSecretKeys, EnvelopeError, Epoch, PAIRING_SECRET_LEN, PairingSecret,
    VaultId, VaultKey, open_envelope, wrap_vault_key,
};
use dooz_protocol::limits::MAX_PAIRING_SLOT_SECS;
use dooz_protocol::{
    Extensions, PairingAwaitReply, PairingOpen, PairingPost, PairingReply, PairingTake, Request,
    Response, SlotId, SlotRefusal,
};
use zeroize::Zeroizing;

use crate::index::{Index, IndexError};
use crate::net::{Connection, NetError};

/// Prefix of every pairing code; the `1` is the format version.
pub const PAIRING_CODE_PREFIX: &str = "dooz-pair1-";

const FINGERPRINT_LEN: usize = 32;
const CHECK_LEN: usize = 4;
const CODE_LEN: usize = PAIRING_SECRET_LEN + FINGERPRINT_LEN + CHECK_LEN;

/// A pairing code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingCodeError {
    /// The text does not start with `dooz-pair1-`.
    #[error(
        "this is not a dooz pairing code (it should start with \"{PAIRING_CODE_PREFIX}\"); run \
         `dooz pair invite` on a device that has the vaults to get one"
    )]
    NotACode,
    /// A character outside the base32 alphabet.
    #[error("the pairing code has an invalid character {0:?}: it was mistyped, type it again")]
    BadCharacter(char),
    /// Too short or too long.
    #[error("the pairing code is incomplete or has extra characters: type all of it again")]
    BadLength,
    /// The check value does not match.
    #[error(
        "the pairing code is mistyped (its check value does not match): compare it character by \
         character with the code the other device shows, and type it again"
    )]
    Mistyped,
}

/// A pairing code: the one-time secret and the inviting device's key fingerprint.
///
/// Secret: `Debug` shows neither, and [`encode`](Self::encode) returns a zeroizing string.
pub struct PairingCode {
    secret: PairingSecret,
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(..)")
    }
}

fn check_of(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&blake3::hash(body).as_bytes()[..CHECK_LEN]);
    out
}

impl PairingCode {
    /// A fresh code for the device whose public keys are `inviter`.
    pub fn generate(inviter: &DevicePublicKeys) -> Result<Self, dooz_crypto::CryptoError> {
        Ok(Self {
            secret: PairingSecret::generate()?,
            fingerprint: inviter.fingerprint(),
        })
    }

    /// The inviting device's key fingerprint.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The one-time secret.
    pub fn secret(&self) -> &PairingSecret {
        &self.secret
    }

    /// The server slot of this code.
    pub fn slot(&self) -> SlotId {
        SlotId::from_bytes(self.secret.slot_id())
    }

    /// The code as text: `dooz-pair1-` and base32 in groups of four.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(CODE_LEN));
        raw.extend_from_slice(self.secret.expose_secret());
        raw.extend_from_slice(&self.fingerprint);
        let check = check_of(&raw);
        raw.extend_from_slice(&check);
        let mut b32 = Zeroizing::new(String::new());
        dooz_protocol::base32::encode_into(&raw, &mut b32);
        let mut out = Zeroizing::new(String::from(PAIRING_CODE_PREFIX));
        for (i, c) in b32.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }
}

impl FromStr for PairingCode {
    type Err = PairingCodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let rest = text
            .get(..PAIRING_CODE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PAIRING_CODE_PREFIX))
            .and_then(|_| text.get(PAIRING_CODE_PREFIX.len()..))
            .ok_or(PairingCodeError::NotACode)?;
        let mut raw = Zeroizing::new(Vec::with_capacity(CODE_LEN));
        dooz_protocol::base32::decode_into(rest, &mut raw).map_err(|e| match e {
            dooz_protocol::base32::Base32Error::BadCharacter(c) => {
                PairingCodeError::BadCharacter(c)
            }
            _ => PairingCodeError::BadLength,
        })?;
        if raw.len() != CODE_LEN {
            return Err(PairingCodeError::BadLength);
        }
        let (body, check) = raw.split_at(CODE_LEN - CHECK_LEN);
        if check_of(body) != check {
            return Err(PairingCodeError::Mistyped);
        }
        let mut secret = [0u8; PAIRING_SECRET_LEN];
        secret.copy_from_slice(&body[..PAIRING_SECRET_LEN]);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&body[PAIRING_SECRET_LEN..]);
        Ok(Self {
            secret: PairingSecret::from_bytes(secret),
            fingerprint,
        })
    }
}

/// Pairing failed. Whatever the reason, no vault key was handed over (initiator) or kept
/// (joiner).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The code could not be read.
    #[error(transparent)]
    Code(#[from] PairingCodeError),
    /// The code's time ran out.
    #[error(
        "this pairing code has expired (codes work for 15 minutes): run `dooz pair invite` again \
         on the device that has the vaults and use the new code"
    )]
    Expired,
    /// The code was used already.
    #[error(
        "this pairing code was used already (a code works once): run `dooz pair invite` again \
         on the device that has the vaults and use the new code"
    )]
    Used,
    /// The server knows no pairing for this code.
    #[error(
        "no pairing is waiting for this code: check that it was typed right, that the inviting \
         device still shows it (`dooz pair invite` is running), and that both devices are \
         enrolled in the same account"
    )]
    UnknownCode,
    /// A payload failed its cryptographic check: the server, or someone else, tampered.
    #[error("pairing refused: {0}")]
    NotAuthentic(#[from] dooz_crypto::PairingError),
    /// An envelope was not made by the device that showed the code.
    #[error(
        "pairing refused: the key of vault {vault} (epoch {epoch}) was not wrapped by the device \
         that showed the code, but by another key (the server's?); no vault key was kept. Pair \
         again with a new code, and compare the code with the one the inviting device shows"
    )]
    UntrustedEnvelope {
        /// The vault.
        vault: VaultId,
        /// The epoch.
        epoch: u32,
    },
    /// An envelope the reply promised is not on the server.
    #[error(
        "pairing incomplete: the server holds no key of vault {vault} (epoch {epoch}) for this \
         device although the inviting device wrapped one; no vault key was kept. Pair again"
    )]
    MissingEnvelope {
        /// The vault.
        vault: VaultId,
        /// The epoch.
        epoch: u32,
    },
    /// The reply's content is malformed.
    #[error("the pairing reply is malformed ({0}); upgrade dooz on both devices")]
    BadReply(&'static str),
    /// The devices this device trusts could not be told about the new device. The new device
    /// has every key; the others learn of it once this device publishes its roster again.
    #[error("paired, but the other devices could not be told about the new one: {0}")]
    Roster(#[source] Box<crate::RotationError>),
    /// The server answered a pairing call with something unexpected.
    #[error("the server answered {request} with {got}; upgrade dooz or the server")]
    Unexpected {
        /// The request.
        request: &'static str,
        /// The answer's name.
        got: &'static str,
    },
    /// The network or the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Key material could not be made or wrapped.
    #[error(transparent)]
    Crypto(#[from] dooz_crypto::CryptoError),
}

/// Sends a pairing call and returns its answer, turning slot refusals into their errors.
async fn call(conn: &Connection, req: Request) -> Result<Response, PairingError> {
    match conn.request_answer(req).await? {
        Response::Error(e) => Err(match SlotRefusal::of(&e) {
            Some(SlotRefusal::Expired) => PairingError::Expired,
            Some(SlotRefusal::Used) => PairingError::Used,
            Some(_) => PairingError::UnknownCode,
            None => PairingError::Net(NetError::Server {
                code: e.code,
                message: e.message,
            }),
        }),
        r => Ok(r),
    }
}

fn expect_ok(request: &'static str, r: Response) -> Result<(), PairingError> {
    match r {
        Response::Ok(_) => Ok(()),
        other => Err(PairingError::Unexpected {
            request,
            got: other.name(),
        }),
    }
}

fn expect_payload(request: &'static str, r: Response) -> Result<Vec<u8>, PairingError> {
    match r {
        Response::PairingPayload(p) => Ok(p.payload),
        other => Err(PairingError::Unexpected {
            request,
            got: other.name(),
        }),
    }
}

fn protocol_vault(vault: VaultId) -> dooz_protocol::VaultId {
    dooz_protocol::VaultId::from_bytes(vault.0)
}

fn protocol_device(keys: &DevicePublicKeys) -> dooz_protocol::DeviceId {
    dooz_protocol::DeviceId::from_bytes(*keys.device_id().as_bytes())
}

/// One vault a pairing handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedVault {
    /// The vault.
    pub vault: VaultId,
    /// Its name on the inviting device (the joiner stores it under this name, or this name
    /// and a suffix if it has another vault so named).
    pub name: String,
    /// The epochs whose keys were handed over, oldest first.
    pub epochs: Vec<Epoch>,
}

fn encode_reply(vaults: &[PairedVault], peers: &[DevicePublicKeys]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = u16::try_from(vaults.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for v in vaults.iter().take(usize::from(count)) {
        out.extend_from_slice(&v.vault.0);
        let epochs = u16::try_from(v.epochs.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&epochs.to_be_bytes());
        for e in v.epochs.iter().take(usize::from(epochs)) {
            out.extend_from_slice(&e.0.to_be_bytes());
        }
        let mut cut = v.name.len().min(255);
        while !v.name.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(u8::try_from(cut).unwrap_or(u8::MAX));
        out.extend_from_slice(v.name.get(..cut).unwrap_or_default().as_bytes());
    }
    let count = u16::try_from(peers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for p in peers.iter().take(usize::from(count)) {
        out.extend_from_slice(&p.to_bytes());
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PairingError> {
        if self.0.len() < n {
            return Err(PairingError::BadReply("it is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PairingError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// The vaults and the trusted devices (inviter first) of a reply.
type Reply = (Vec<PairedVault>, Vec<DevicePublicKeys>);

fn decode_reply(bytes: &[u8]) -> Result<Reply, PairingError> {
    let mut r = Reader(bytes);
    let count = u16::from_be_bytes(r.array()?);
    let mut out = Vec::new();
    for _ in 0..count {
        let vault = VaultId(r.array()?);
        let n = u16::from_be_bytes(r.array()?);
        let mut epochs = Vec::new();
        for _ in 0..n {
            epochs.push(Epoch(u32::from_be_bytes(r.array()?)));
        }
        let [len] = r.array()?;
        let name = std::str::from_utf8(r.take(usize::from(len))?)
            .map_err(|_| PairingError::BadReply("a vault name is not UTF-8"))?
            .to_owned();
        out.push(PairedVault {
            vault,
            name,
            epochs,
        });
    }
    let count = u16::from_be_bytes(r.array()?);
    let mut peers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        peers.push(DevicePublicKeys::from_bytes(&r.array()?));
    }
    if !r.0.is_empty() {
        return Err(PairingError::BadReply("it has trailing bytes"));
    }
    Ok((out, peers))
}

/// The initiator's side: a slot opened on the server, waiting for the new device.
#[derive(Debug)]
pub struct Invitation {
    code: PairingCode,
}

/// The device an [`Invitation`] handed the vaults to.
#[derive(Debug, Clone)]
pub struct PairedDevice {
    /// Its device id.
    pub device: dooz_crypto::DeviceId,
    /// The name it gave itself.
    pub name: String,
    /// The vaults handed over.
    pub vaults: Vec<PairedVault>,
}

impl Invitation {
    /// Makes a code for this device (`me`) and opens its slot on the server for 15 minutes.
    pub async fn open(conn: &Connection, me: &DeviceSecretKeys) -> Result<Self, PairingError> {
        let code = PairingCode::generate(&me.public())?;
        let req = Request::PairingOpen(PairingOpen {
            slot: code.slot(),
            expires_in_secs: MAX_PAIRING_SLOT_SECS,
            ext: Extensions::default(),
        });
        expect_ok("PairingOpen", call(conn, req).await?)?;
        Ok(Self { code })
    }

    /// The code to show to the person at the new device.
    pub fn code(&self) -> &PairingCode {
        &self.code
    }

    /// Waits for the new device to answer the code, checks that it knows the code, wraps every
    /// key of every named vault in `index` to it and replies. A post that fails the check
    /// ends the pairing with [`PairingError::NotAuthentic`] before anything is wrapped.
    pub async fn complete(
        self,
        conn: &Connection,
        me: &DeviceSecretKeys,
        index: &Index,
    ) -> Result<PairedDevice, PairingError> {
        let slot = self.code.slot();
        let take = Request::PairingTake(PairingTake {
            slot,
            ext: Extensions::default(),
        });
        let post = expect_payload("PairingTake", call(conn, take).await?)?;
        let joiner = self.code.secret.open_join(&post)?;
        let recipient = protocol_device(&joiner.keys);
        let mut vaults = Vec::new();
        for (name, vault) in index.vault_names()? {
            let keys = index.vault_keys(vault)?;
            if keys.is_empty() {
                continue;
            }
            let mut epochs = Vec::new();
            for (epoch, key) in &keys {
                let envelope = wrap_vault_key(me, &joiner.keys, vault, *epoch, key)?;
                conn.put_envelope(
                    protocol_vault(vault),
                    dooz_protocol::Epoch::new(epoch.0),
                    recipient,
                    envelope,
                )
                .await?;
                epochs.push(*epoch);
            }
            vaults.push(PairedVault {
                vault,
                name,
                epochs,
            });
        }
        let mut peers = vec![me.public()];
        peers.extend(
            index
                .trusted_peers()?
                .into_iter()
                .filter(|p| *p != me.public() && *p != joiner.keys),
        );
        let sealed = self
            .code
            .secret
            .seal_reply(&joiner.keys, &encode_reply(&vaults, &peers))?;
        let reply = Request::PairingReply(PairingReply {
            slot,
            payload: sealed,
            ext: Extensions::default(),
        });
        expect_ok("PairingReply", call(conn, reply).await?)?;
        index.trust_peer(&joiner.keys)?;
        // Tell the devices this one trusts about the new one (and the new one about them).
        crate::rotation::publish_roster(conn, me, index)
            .await
            .map_err(|e| match e {
                crate::RotationError::Net(n) => PairingError::Net(n),
                crate::RotationError::Index(i) => PairingError::Index(i),
                other => PairingError::Roster(Box::new(other)),
            })?;
        Ok(PairedDevice {
            device: joiner.keys.device_id(),
            name: joiner.name,
            vaults,
        })
    }
}

/// The joiner's side: its keys posted to the slot, waiting for the initiator's reply.
#[derive(Debug)]
pub struct Joining {
    code: PairingCode,
}

impl Joining {
    /// Posts this device's public keys and `name` to the slot of `code`.
    pub async fn post(
        conn: &Connection,
        me: &DeviceSecretKeys,
        code: PairingCode,
        name: &str,
    ) -> Result<Self, PairingError> {
        let payload = code.secret.seal_join(&me.public(), name);
        let req = Request::PairingPost(PairingPost {
            slot: code.slot(),
            payload,
            ext: Extensions::default(),
        });
        expect_ok("PairingPost", call(conn, req).await?)?;
        Ok(Self { code })
    }

    /// Waits for the initiator's reply, opens every envelope it promises and checks each was
    /// wrapped by the device whose fingerprint is in the code. Only if all check out are the
    /// keys and vault names stored in `index` (vaults are not bound to folders).
    pub async fn finish(
        self,
        conn: &Connection,
        me: &DeviceSecretKeys,
        index: &Index,
    ) -> Result<Vec<PairedVault>, PairingError> {
        let req = Request::PairingAwaitReply(PairingAwaitReply {
            slot: self.code.slot(),
            ext: Extensions::default(),
        });
        let sealed = expect_payload("PairingAwaitReply", call(conn, req).await?)?;
        let reply = self.code.secret.open_reply(&me.public(), &sealed)?;
        let (vaults, peers) = decode_reply(&reply)?;
        let inviter = match peers.first() {
            Some(p) if p.fingerprint() == self.code.fingerprint => *p,
            _ => {
                return Err(PairingError::BadReply(
                    "it does not start with the inviter's keys",
                ));
            }
        };
        let mut keys: Vec<(VaultId, Epoch, VaultKey)> = Vec::new();
        for v in &vaults {
            let envelopes = conn.get_envelopes(protocol_vault(v.vault)).await?;
            for epoch in &v.epochs {
                let mut found = false;
                let mut accepted = None;
                for e in envelopes.iter().filter(|e| e.epoch.get() == epoch.0) {
                    found = true;
                    let Ok(opened) = open_envelope(me, &e.envelope) else {
                        continue;
                    };
                    let checked: Result<(), EnvelopeError> =
                        opened.verify_sender_fingerprint(&self.code.fingerprint);
                    if checked.is_ok() && opened.vault == v.vault && opened.epoch == *epoch {
                        accepted = Some(opened.key);
                        break;
                    }
                }
                match accepted {
                    Some(key) => keys.push((v.vault, *epoch, key)),
                    None if found => {
                        return Err(PairingError::UntrustedEnvelope {
                            vault: v.vault,
                            epoch: epoch.0,
                        });
                    }
                    None => {
                        return Err(PairingError::MissingEnvelope {
                            vault: v.vault,
                            epoch: epoch.0,
                        });
                    }
                }
            }
        }
        for (vault, epoch, key) in &keys {
            index.put_vault_key(*vault, *epoch, key)?;
        }
        index.trust_peer(&inviter)?;
        for p in peers.iter().skip(1).filter(|p| **p != me.public()) {
            index.trust_peer(p)?;
        }
        for v in &vaults {
            let name = match index.vault_by_name(&v.name)? {
                Some(other) if other != v.vault => {
                    format!("{}-{}", v.name, &v.vault.to_string()[..8])
                }
                _ => v.name.clone(),
            };
            if index.vault_names()?.iter().all(|(_, id)| *id != v.vault) {
                index.set_vault_name(&name, v.vault)?;
            }
        }
        Ok(vaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_typos_are_caught() {
        let me = DeviceSecretKeys::generate().unwrap().public();
        let code = PairingCode::generate(&me).unwrap();
        let text = code.encode();
        let back: PairingCode = text.parse().unwrap();
        assert_eq!(back.fingerprint(), &me.fingerprint());
        assert_eq!(back.slot(), code.slot());
        // Upper case and spaces read too.
        let loose = text.to_uppercase().replace('-', " ").replacen(' ', "-", 2);
        assert!(loose.parse::<PairingCode>().is_ok(), "{loose}");

        // One character changed: the check catches it.
        let mut typo: Vec<char> = text.chars().collect();
        let at = PAIRING_CODE_PREFIX.len() + 3;
        typo[at] = if typo[at] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(
            typo.parse::<PairingCode>().unwrap_err(),
            PairingCodeError::Mistyped
        );
        assert_eq!(
            "dooz-vault1-abcd".parse::<PairingCode>().unwrap_err(),
            PairingCodeError::NotACode
        );
        assert_eq!(
            text[..text.len() - 5].parse::<PairingCode>().unwrap_err(),
            PairingCodeError::BadLength
        );
        assert!(matches!(
            format!("{}!", text.as_str())
                .parse::<PairingCode>()
                .unwrap_err(),
            PairingCodeError::BadCharacter('!')
        ));
    }

    #[test]
    fn replies_round_trip() {
        let vaults = vec![
            PairedVault {
                vault: VaultId([1; 16]),
                name: "photos".into(),
                epochs: vec![Epoch(0), Epoch(3)],
            },
            PairedVault {
                vault: VaultId([2; 16]),
                name: String::new(),
                epochs: vec![Epoch(1)],
            },
        ];
        let peers = vec![
            DeviceSecretKeys::generate().unwrap().public(),
            DeviceSecretKeys::generate().unwrap().public(),
        ];
        let bytes = encode_reply(&vaults, &peers);
        assert_eq!(decode_reply(&bytes).unwrap(), (vaults, peers));
        assert!(decode_reply(&bytes[..bytes.len() - 1]).is_err());
    }
}

//! Vault codes: a copy-pasteable secret (`dooz-vault1-...`) that carries a vault's id and every
//! key this device holds for it, to another device of the same account (layout in
//! `docs/FORMAT.md`, "Vault codes").
//!
//! **A stop-gap until pairing.** Pairing (a later issue) moves vault keys between devices as
//! envelopes wrapped to the receiving device's exchange key, confirmed by both people. Until
//! it exists, `dooz vault invite` prints a vault code and `dooz vault join` reads it: whoever
//! sees the code can read the vault, so it goes only to the account's own devices, over a
//! channel the user trusts.
//!
//! ```text
//! code    = "dooz-vault1-" base32(payload)   RFC 4648 alphabet, lowercase, no padding
//! payload = vault:[u8; 16]
//!         | name_len:u8 | name               UTF-8, 0..=255 bytes: the vault's name on the inviting device
//!         | key_count:u8                     1..=255
//!         | key_count × (epoch:u32 BE | key:[u8; 32])   epochs strictly increasing
//!         | check:[u8; 4]                    first 4 bytes of BLAKE3(everything before it)
//! ```
//!
//! Reading ignores case, surrounding whitespace and any `-`, space or line break inside the
//! base32 part, and refuses a code whose check bytes do not match (a typo or a cut copy).

use std::fmt;
use std::str::FromStr;

use dooz_crypto::{Epoch, VaultId, VaultKey};
use zeroize::Zeroizing;

/// Prefix of every vault code; the `1` is the format version.
pub const VAULT_CODE_PREFIX: &str = "dooz-vault1-";

const CHECK_LEN: usize = 4;
const KEY_LEN: usize = 32;

/// A vault code could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultCodeError {
    /// The text does not start with `dooz-vault1-`.
    #[error(
        "this is not a dooz vault code (it should start with \"{VAULT_CODE_PREFIX}\"); on a \
         device that has the vault, run `dooz vault invite <name>` to print one"
    )]
    NotACode,
    /// A character outside the base32 alphabet.
    #[error("the vault code has an invalid character {0:?}; copy it again")]
    BadCharacter(char),
    /// The code is cut short or has extra characters.
    #[error("the vault code is incomplete or has extra characters; copy all of it again")]
    BadLength,
    /// The check value does not match: a typo or a truncated copy.
    #[error("the vault code is mistyped (its check value does not match); copy it again")]
    BadCheck,
    /// A field is invalid.
    #[error("the vault code's {0} is invalid: {1}")]
    BadField(&'static str, &'static str),
}

/// A vault's id, its name on the inviting device and every key of it that device holds.
///
/// Secret: the keys are zeroized on drop, `Debug` shows neither keys nor code, and
/// [`encode`](Self::encode) returns the text in a zeroizing string.
pub struct VaultCode {
    vault: VaultId,
    name: String,
    keys: Vec<(Epoch, VaultKey)>,
}

impl fmt::Debug for VaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultCode")
            .field("vault", &self.vault)
            .field("name", &self.name)
            .field(
                "epochs",
                &self.keys.iter().map(|(e, _)| e.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl VaultCode {
    /// A code for `vault`, suggested name `name` (0 to 255 bytes), with `keys` (1 to 255 of
    /// them, any order, no epoch twice).
    pub fn new(
        vault: VaultId,
        name: impl Into<String>,
        mut keys: Vec<(Epoch, VaultKey)>,
    ) -> Result<Self, VaultCodeError> {
        let name = name.into();
        if name.len() > 255 {
            return Err(VaultCodeError::BadField("name", "it is over 255 bytes"));
        }
        if keys.is_empty() || keys.len() > 255 {
            return Err(VaultCodeError::BadField(
                "key list",
                "it must hold 1 to 255 keys",
            ));
        }
        keys.sort_by_key(|(e, _)| *e);
        if keys.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
            return Err(VaultCodeError::BadField(
                "key list",
                "an epoch appears twice",
            ));
        }
        Ok(Self { vault, name, keys })
    }

    /// The vault.
    pub fn vault(&self) -> VaultId {
        self.vault
    }

    /// The vault's name on the device that made the code (may be empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys, oldest epoch first.
    pub fn keys(&self) -> &[(Epoch, VaultKey)] {
        &self.keys
    }

    fn payload(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            16 + 1 + self.name.len() + 1 + self.keys.len() * (4 + KEY_LEN) + CHECK_LEN,
        ));
        out.extend_from_slice(self.vault.as_bytes());
        // Lengths were checked by `new`.
        out.push(u8::try_from(self.name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.name.as_bytes());
        out.push(u8::try_from(self.keys.len()).unwrap_or(u8::MAX));
        for (epoch, key) in &self.keys {
            out.extend_from_slice(&epoch.0.to_be_bytes());
            out.extend_from_slice(key.expose_secret());
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes().get(..CHECK_LEN).unwrap_or_default());
        out
    }

    /// The code as text, `dooz-vault1-...`. A secret: show it only to the person moving the
    /// vault to their own device.
    pub fn encode(&self) -> Zeroizing<String> {
        let payload = self.payload();
        let mut out = Zeroizing::new(String::with_capacity(
            VAULT_CODE_PREFIX.len() + payload.len().div_ceil(5) * 8,
        ));
        out.push_str(VAULT_CODE_PREFIX);
        base32_encode(&payload, &mut out);
        out
    }
}

impl FromStr for VaultCode {
    type Err = VaultCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s
            .get(..VAULT_CODE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(VAULT_CODE_PREFIX))
            .and_then(|_| s.get(VAULT_CODE_PREFIX.len()..))
            .ok_or(VaultCodeError::NotACode)?;
        let bytes = base32_decode(body)?;
        let (payload, check) = bytes
            .split_last_chunk::<CHECK_LEN>()
            .ok_or(VaultCodeError::BadLength)?;
        let want = blake3::hash(payload);
        // The check covers key bytes: compare without early exit.
        let diff = want
            .as_bytes()
            .iter()
            .zip(check)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(VaultCodeError::BadCheck);
        }
        let (vault, rest) = payload
            .split_first_chunk::<16>()
            .ok_or(VaultCodeError::BadLength)?;
        let (&name_len, rest) = rest.split_first().ok_or(VaultCodeError::BadLength)?;
        let (name, rest) = rest
            .split_at_checked(usize::from(name_len))
            .ok_or(VaultCodeError::BadLength)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| VaultCodeError::BadField("name", "it is not UTF-8"))?;
        let (&count, mut rest) = rest.split_first().ok_or(VaultCodeError::BadLength)?;
        if count == 0 {
            return Err(VaultCodeError::BadField("key list", "it is empty"));
        }
        let mut keys = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (epoch, tail) = rest
                .split_first_chunk::<4>()
                .ok_or(VaultCodeError::BadLength)?;
            let (key, tail) = tail
                .split_first_chunk::<KEY_LEN>()
                .ok_or(VaultCodeError::BadLength)?;
            let epoch = Epoch(u32::from_be_bytes(*epoch));
            if keys
                .last()
                .is_some_and(|(last, _): &(Epoch, VaultKey)| *last >= epoch)
            {
                return Err(VaultCodeError::BadField(
                    "key list",
                    "its epochs are not in increasing order",
                ));
            }
            keys.push((epoch, VaultKey::from_bytes(*key)));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(VaultCodeError::BadLength);
        }
        Ok(Self {
            vault: VaultId(*vault),
            name: name.to_owned(),
            keys,
        })
    }
}

fn base32_encode(bytes: &[u8], out: &mut String) {
    dooz_protocol::base32::encode_into(bytes, out);
}

fn base32_decode(text: &str) -> Result<Zeroizing<Vec<u8>>, VaultCodeError> {
    let mut out = Zeroizing::new(Vec::new());
    dooz_protocol::base32::decode_into(text, &mut out).map_err(|e| match e {
        dooz_protocol::base32::Base32Error::BadCharacter(c) => VaultCodeError::BadCharacter(c),
        _ => VaultCodeError::BadLength,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VaultCode {
        VaultCode::new(
            VaultId([0x11; 16]),
            "photos",
            vec![
                (Epoch(1), VaultKey::from_bytes([0x33; 32])),
                (Epoch(0), VaultKey::from_bytes([0x22; 32])),
            ],
        )
        .unwrap()
    }

    fn same(a: &VaultCode, b: &VaultCode) -> bool {
        a.vault == b.vault
            && a.name == b.name
            && a.keys.len() == b.keys.len()
            && a.keys
                .iter()
                .zip(&b.keys)
                .all(|(x, y)| x.0 == y.0 && x.1.expose_secret() == y.1.expose_secret())
    }

    #[test]
    fn round_trip_and_messy_input() {
        let code = sample();
        assert_eq!(code.keys()[0].0, Epoch(0), "keys are sorted by epoch");
        let text = code.encode();
        assert!(text.starts_with(VAULT_CODE_PREFIX));
        assert!(same(&text.parse().unwrap(), &code));
        let body = &text[VAULT_CODE_PREFIX.len()..];
        let messy = format!(
            "  DOOZ-VAULT1-{}\n",
            body.to_uppercase()
                .as_bytes()
                .chunks(10)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("-\n")
        );
        assert!(same(&messy.parse().unwrap(), &code));
        let debug = format!("{code:?}");
        assert!(debug.contains("photos") && !debug.contains("33"), "{debug}");
    }

    /// The example in `docs/FORMAT.md` ("Vault codes") is what this code writes.
    #[test]
    fn documented_vector() {
        let code = VaultCode::new(
            VaultId(core::array::from_fn(|i| i as u8)),
            "docs",
            vec![(
                Epoch(0),
                VaultKey::from_bytes(core::array::from_fn(|i| 0x20 + i as u8)),
            )],
        )
        .unwrap();
        let text = code.encode();
        let doc = include_str!("../../docs/FORMAT.md");
        assert!(
            doc.contains(text.as_str()),
            "docs/FORMAT.md lacks the vault code vector {}",
            text.as_str()
        );
    }

    #[test]
    fn damage_is_caught() {
        let text = sample().encode();
        assert!(matches!(
            "dooz1-abc".parse::<VaultCode>(),
            Err(VaultCodeError::NotACode)
        ));
        let mut typo: Vec<char> = text.chars().collect();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(
            typo.parse::<VaultCode>(),
            Err(VaultCodeError::BadCheck)
        ));
        for cut in VAULT_CODE_PREFIX.len()..text.len() {
            assert!(text[..cut].parse::<VaultCode>().is_err(), "cut at {cut}");
        }
        assert!(matches!(
            format!("{}1", text.as_str()).parse::<VaultCode>(),
            Err(VaultCodeError::BadCharacter('1'))
        ));
    }

    #[test]
    fn bad_key_lists_are_refused() {
        let vault = VaultId([1; 16]);
        assert!(VaultCode::new(vault, "x", Vec::new()).is_err());
        let twice = vec![
            (Epoch(2), VaultKey::from_bytes([1; 32])),
            (Epoch(2), VaultKey::from_bytes([2; 32])),
        ];
        assert!(VaultCode::new(vault, "x", twice).is_err());
        assert!(
            VaultCode::new(
                vault,
                "x".repeat(256),
                vec![(Epoch(0), VaultKey::from_bytes([1; 32]))]
            )
            .is_err()
        );
    }

    #[test]
    fn base32_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            let mut out = String::new();
            base32_encode(plain.as_bytes(), &mut out);
            assert_eq!(out, encoded);
            assert_eq!(&base32_decode(encoded).unwrap()[..], plain.as_bytes());
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut text = VAULT_CODE_PREFIX.to_owned();
            base32_encode(&bytes, &mut text);
            let _ = text.parse::<VaultCode>();
            let _ = String::from_utf8_lossy(&bytes).parse::<VaultCode>();
        }
    }
}

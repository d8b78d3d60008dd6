//! Enrolment codes and enrolment requests, sans-IO (specified in `docs/PROTOCOL.md`,
//! "Enrolment").
//!
//! An enrolment code is one copy-pasteable string carrying what a new device needs to reach and
//! pin the server and to enrol: the server's address, its certificate fingerprint and an
//! enrolment token.
//!
//! ```text
//! code    = "dooz1-" base32(payload)       RFC 4648 alphabet, lowercase, no padding
//! payload = addr_len:u8 | addr            "host:port", UTF-8, 1..=255 bytes
//!         | fingerprint:[u8; 32]          BLAKE3 of the server certificate DER
//!         | token_len:u8 | token          the enrolment token, UTF-8, 1..=255 bytes
//!         | check:[u8; 4]                 first 4 bytes of BLAKE3(everything before it)
//! ```
//!
//! A device redeems the token over an enrolment connection (ALPN [`ENROL_ALPN`],
//! `dooz-enrol/1`): its first stream carries `Hello` with an [`EnrolRequest`] in extension
//! [`ENROL_EXTENSION_TAG`]:
//!
//! ```text
//! value = token_len:u8 | token            UTF-8, 1..=255 bytes
//!       | exchange_key:[u8; 32]           the device's X25519 public key
//!       | name_len:u16 BE | name          UTF-8, 1..=256 bytes ("Ana's laptop")
//! ```
//!
//! Parsing ignores case, surrounding whitespace and any `-`, space or newline inside the
//! base32 part (so a code broken over lines still reads), and refuses a wrong check value:
//! a mistyped code is reported as such rather than as a failed connection.
//!
//! ```
//! use dooz_protocol::{ENROLMENT_CODE_PREFIX, EnrolmentCode};
//!
//! let code = EnrolmentCode {
//!     address: "127.0.0.1:7300".to_owned(),
//!     fingerprint: [0xab; 32],
//!     token: "et1_example".to_owned(),
//! };
//! let text = code.encode()?;
//! assert!(text.starts_with(ENROLMENT_CODE_PREFIX));
//! assert_eq!(text.parse::<EnrolmentCode>()?, code);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::limits::MAX_NAME_LEN;
use crate::{Extension, Hello};

/// Prefix of every enrolment code; the `1` is the format version.
pub const ENROLMENT_CODE_PREFIX: &str = "dooz1-";

/// ALPN id of enrolment connections: a device that is not enrolled yet connects with it to
/// redeem an enrolment token. The server serves both this and [`ALPN`](crate::ALPN) on one
/// endpoint.
pub const ENROL_ALPN: &[u8] = b"dooz-enrol/1";

const CHECK_LEN: usize = 4;

/// What a new device needs to enrol with a server.
///
/// `Display` writes the code (which holds a secret token: show it only to the person enrolling);
/// `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentCode {
    /// `host:port` of the server's data plane.
    pub address: String,
    /// BLAKE3 of the server's certificate DER: the device pins it.
    pub fingerprint: [u8; 32],
    /// The enrolment token the device presents.
    pub token: String,
}

impl fmt::Debug for EnrolmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolmentCode")
            .field("address", &self.address)
            .field(
                "fingerprint",
                &blake3::Hash::from(self.fingerprint).to_hex().as_str(),
            )
            .field("token", &"..")
            .finish()
    }
}

/// An enrolment code could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnrolmentCodeError {
    /// The text does not start with `dooz1-`.
    #[error(
        "this is not a dooz enrolment code (it should start with \"{ENROLMENT_CODE_PREFIX}\"); \
         ask the server's admin for one (`dooz-server admin enrol-code`)"
    )]
    NotACode,
    /// A character outside the base32 alphabet.
    #[error("the enrolment code has an invalid character {0:?}; copy it again")]
    BadCharacter(char),
    /// The code is cut short or has extra characters.
    #[error("the enrolment code is incomplete or has extra characters; copy all of it again")]
    BadLength,
    /// The check value does not match: a typo or a truncated copy.
    #[error("the enrolment code is mistyped (its check value does not match); copy it again")]
    BadCheck,
    /// A field is empty, too long or not UTF-8.
    #[error("the enrolment code's {0} is invalid: {1}")]
    BadField(&'static str, &'static str),
}

/// Extension tag (non-critical) on `Hello` carrying an [`EnrolRequest`], on enrolment
/// connections only.
pub const ENROL_EXTENSION_TAG: u32 = 0x0001;

/// What a device sends to enrol: the token from the enrolment code and the keys and name the
/// server registers (its identity key is the one in its client certificate).
///
/// `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolRequest {
    /// The enrolment token.
    pub token: String,
    /// The device's X25519 public key, to which vault keys are wrapped.
    pub exchange_key: [u8; 32],
    /// A name people recognise the device by, 1 to 256 bytes.
    pub device_name: String,
}

impl fmt::Debug for EnrolRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolRequest")
            .field("token", &"..")
            .field(
                "exchange_key",
                &blake3::Hash::from(self.exchange_key).to_hex().as_str(),
            )
            .field("device_name", &self.device_name)
            .finish()
    }
}

impl EnrolRequest {
    /// The extension value.
    pub fn encode(&self) -> Result<Vec<u8>, EnrolmentCodeError> {
        let token = field_len("token", &self.token)?;
        if self.device_name.is_empty() || self.device_name.len() > MAX_NAME_LEN {
            return Err(EnrolmentCodeError::BadField(
                "device name",
                "it must be 1 to 256 bytes",
            ));
        }
        let name_len = u16::try_from(self.device_name.len())
            .map_err(|_| EnrolmentCodeError::BadField("device name", "it is too long"))?;
        let mut out = Vec::with_capacity(1 + self.token.len() + 32 + 2 + self.device_name.len());
        out.push(token);
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(&self.exchange_key);
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(self.device_name.as_bytes());
        Ok(out)
    }

    /// Reads an extension value written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<Self, EnrolmentCodeError> {
        let mut rest = bytes;
        let token = take_str(&mut rest, "token")?;
        let (exchange_key, tail) = rest
            .split_first_chunk::<32>()
            .ok_or(EnrolmentCodeError::BadLength)?;
        let (name_len, tail) = tail
            .split_first_chunk::<2>()
            .ok_or(EnrolmentCodeError::BadLength)?;
        let name_len = usize::from(u16::from_be_bytes(*name_len));
        if name_len == 0 || name_len > MAX_NAME_LEN || tail.len() != name_len {
            return Err(EnrolmentCodeError::BadField(
                "device name",
                "it must be 1 to 256 bytes and end the request",
            ));
        }
        let device_name = String::from_utf8(tail.to_vec())
            .map_err(|_| EnrolmentCodeError::BadField("device name", "it is not UTF-8"))?;
        Ok(Self {
            token,
            exchange_key: *exchange_key,
            device_name,
        })
    }

    /// The extension to put on `Hello`.
    pub fn to_extension(&self) -> Result<Extension, EnrolmentCodeError> {
        Ok(Extension::optional(ENROL_EXTENSION_TAG, self.encode()?))
    }

    /// The request carried by `hello`, `Ok(None)` if it carries none.
    pub fn from_hello(hello: &Hello) -> Result<Option<Self>, EnrolmentCodeError> {
        hello
            .ext
            .get(ENROL_EXTENSION_TAG)
            .map(|e| Self::decode(&e.value))
            .transpose()
    }
}

impl EnrolmentCode {
    fn payload(&self) -> Result<Vec<u8>, EnrolmentCodeError> {
        let addr = field_len("address", &self.address)?;
        let token = field_len("token", &self.token)?;
        let mut out = Vec::with_capacity(2 + self.address.len() + 32 + self.token.len() + 4);
        out.push(addr);
        out.extend_from_slice(self.address.as_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.push(token);
        out.extend_from_slice(self.token.as_bytes());
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes().get(..CHECK_LEN).unwrap_or_default());
        Ok(out)
    }

    /// The code as text, `dooz1-...`. Fails when the address or token is empty or over 255
    /// bytes.
    pub fn encode(&self) -> Result<String, EnrolmentCodeError> {
        Ok(format!(
            "{ENROLMENT_CODE_PREFIX}{}",
            base32_encode(&self.payload()?)
        ))
    }
}

fn field_len(name: &'static str, value: &str) -> Result<u8, EnrolmentCodeError> {
    match u8::try_from(value.len()) {
        Ok(0) => Err(EnrolmentCodeError::BadField(name, "it is empty")),
        Ok(n) => Ok(n),
        Err(_) => Err(EnrolmentCodeError::BadField(name, "it is over 255 bytes")),
    }
}

impl FromStr for EnrolmentCode {
    type Err = EnrolmentCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s
            .get(..ENROLMENT_CODE_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENROLMENT_CODE_PREFIX))
            .and_then(|_| s.get(ENROLMENT_CODE_PREFIX.len()..))
            .ok_or(EnrolmentCodeError::NotACode)?;
        let bytes = base32_decode(body)?;
        let (payload, check) = bytes
            .split_last_chunk::<CHECK_LEN>()
            .ok_or(EnrolmentCodeError::BadLength)?;
        if blake3::hash(payload).as_bytes().get(..CHECK_LEN) != Some(&check[..]) {
            return Err(EnrolmentCodeError::BadCheck);
        }
        let mut rest = payload;
        let address = take_str(&mut rest, "address")?;
        let fingerprint = rest
            .split_first_chunk::<32>()
            .map(|(fp, tail)| {
                rest = tail;
                *fp
            })
            .ok_or(EnrolmentCodeError::BadLength)?;
        let token = take_str(&mut rest, "token")?;
        if !rest.is_empty() {
            return Err(EnrolmentCodeError::BadLength);
        }
        Ok(Self {
            address,
            fingerprint,
            token,
        })
    }
}

fn take_str(rest: &mut &[u8], name: &'static str) -> Result<String, EnrolmentCodeError> {
    let (&len, tail) = rest.split_first().ok_or(EnrolmentCodeError::BadLength)?;
    if len == 0 {
        return Err(EnrolmentCodeError::BadField(name, "it is empty"));
    }
    let (value, tail) = tail
        .split_at_checked(usize::from(len))
        .ok_or(EnrolmentCodeError::BadLength)?;
    *rest = tail;
    String::from_utf8(value.to_vec())
        .map_err(|_| EnrolmentCodeError::BadField(name, "it is not UTF-8"))
}

impl fmt::Display for EnrolmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encode() {
            Ok(code) => f.write_str(&code),
            Err(_) => f.write_str("<invalid enrolment code>"),
        }
    }
}

fn base32_encode(bytes: &[u8]) -> String {
    crate::base32::encode(bytes)
}

fn base32_decode(text: &str) -> Result<Vec<u8>, EnrolmentCodeError> {
    crate::base32::decode(text).map_err(|e| match e {
        crate::base32::Base32Error::BadCharacter(c) => EnrolmentCodeError::BadCharacter(c),
        _ => EnrolmentCodeError::BadLength,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrolmentCode {
        EnrolmentCode {
            address: "127.0.0.1:7300".to_owned(),
            fingerprint: [0xab; 32],
            token: "tok_0123456789".to_owned(),
        }
    }

    #[test]
    fn round_trip() {
        let code = sample();
        let text = code.encode().unwrap();
        assert!(text.starts_with(ENROLMENT_CODE_PREFIX));
        assert_eq!(text.parse::<EnrolmentCode>().unwrap(), code);
        // Case, whitespace and hyphens do not matter.
        let messy = format!(
            "  {}\n",
            text.to_uppercase()
                .chars()
                .enumerate()
                .flat_map(|(i, c)| if i > 6 && i % 10 == 0 {
                    vec!['-', c]
                } else {
                    vec![c]
                })
                .collect::<String>()
        );
        assert_eq!(messy.parse::<EnrolmentCode>().unwrap(), code);
        assert!(!format!("{code:?}").contains("tok_"));
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 section 10 vectors, lowercase and without padding.
        for (plain, encoded) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn typos_are_caught() {
        let text = sample().encode().unwrap();
        assert_eq!(
            "hello".parse::<EnrolmentCode>(),
            Err(EnrolmentCodeError::NotACode)
        );
        let mut typo: Vec<char> = text.chars().collect();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(
            typo.parse::<EnrolmentCode>(),
            Err(EnrolmentCodeError::BadCheck)
        );
        let cut = &text[..text.len() - 3];
        assert!(cut.parse::<EnrolmentCode>().is_err());
        assert_eq!(
            format!("{text}1").parse::<EnrolmentCode>(),
            Err(EnrolmentCodeError::BadCharacter('1'))
        );
    }

    #[test]
    fn enrol_requests_round_trip() {
        let req = EnrolRequest {
            token: "et1_abc".to_owned(),
            exchange_key: [9; 32],
            device_name: "Ana's laptop".to_owned(),
        };
        let hello = Hello {
            protocol_version: 1,
            client_name: "t".to_owned(),
            client_version: "0".to_owned(),
            ext: crate::Extensions::new().with(req.to_extension().unwrap()),
        };
        assert_eq!(EnrolRequest::from_hello(&hello).unwrap(), Some(req.clone()));
        let bytes = req.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(EnrolRequest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(EnrolRequest::decode(&long).is_err());
        assert!(!format!("{req:?}").contains("et1_"));
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = EnrolRequest::decode(&bytes);
            let text = format!("{ENROLMENT_CODE_PREFIX}{}", base32_encode(&bytes));
            let _ = text.parse::<EnrolmentCode>();
            let _ = String::from_utf8_lossy(&bytes).parse::<EnrolmentCode>();
        }

        #[test]
        fn codes_round_trip(
            address in "[a-z0-9.:-]{1,255}",
            fingerprint in proptest::array::uniform32(proptest::num::u8::ANY),
            token in "[a-z0-9_]{1,255}",
        ) {
            let code = EnrolmentCode { address, fingerprint, token };
            let text = code.encode().unwrap();
            proptest::prop_assert_eq!(text.parse::<EnrolmentCode>().unwrap(), code);
        }
    }

    #[test]
    fn bad_fields_do_not_encode() {
        let mut code = sample();
        code.token = String::new();
        assert!(code.encode().is_err());
        code.token = "x".repeat(256);
        assert!(code.encode().is_err());
    }
}

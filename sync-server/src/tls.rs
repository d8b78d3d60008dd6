//! TLS for the data plane: the server's identity, the device-certificate verifier, and the
//! client-side helpers (pinned server verifier, device certificate) that `dooz-client` uses.
//!
//! # Identities
//!
//! - **Server**: an Ed25519 key (PKCS#8 DER) and a self-signed certificate made by rcgen, both
//!   persisted in the data dir ([`ServerIdentity::load_or_create`]). Devices pin the server by
//!   its [fingerprint](server_fingerprint): BLAKE3 of the certificate DER, in hex. The
//!   enrolment code carries it.
//! - **Device**: its Ed25519 identity key, presented as a self-signed client certificate. The
//!   certificate is only a carrier: the server ignores names, validity dates and the
//!   certificate's own signature, and identifies the device by its public key alone
//!   ([`device_id_from_cert`]: `DeviceId = BLAKE3(raw 32-byte Ed25519 public key)`, the same as
//!   `dooz_crypto::DeviceId::from_identity_key`). The TLS 1.3 `CertificateVerify` signature,
//!   checked with the ring provider, proves the peer holds that key.
//!
//! Only TLS 1.3 is offered, client authentication is mandatory, and the only certificate key
//! accepted from a device is Ed25519.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dooz_protocol::{ALPN, DeviceId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, PeerIncompatible, SignatureScheme,
};
use thiserror::Error;
use zeroize::Zeroizing;

/// The DNS name in the server certificate, and the name clients connect with. Clients pin the
/// certificate's fingerprint, so the name is not checked; it only has to be a valid name.
pub const SERVER_NAME: &str = "dooz-server";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): `SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }`; the 32-byte raw public key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// ALPN id of enrolment connections: a device that is not enrolled yet connects with it to
/// redeem an enrolment token (see `docs/PROTOCOL.md`, "Enrolment"). The server serves both this
/// and [`ALPN`] on one endpoint. Defined in `dooz-protocol`.
pub const ENROL_ALPN: &[u8] = dooz_protocol::ENROL_ALPN;

/// File name of the server's private key (PKCS#8 DER) in the data dir.
pub const SERVER_KEY_FILE: &str = "server-key.pk8";
/// File name of the server's certificate (DER) in the data dir.
pub const SERVER_CERT_FILE: &str = "server-cert.der";

/// A TLS set-up step failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen could not generate or load a key, or sign a certificate.
    #[error("could not make a TLS key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (for example a key that does not match the certificate).
    #[error("could not configure TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// Reading or writing the identity files failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The persisted identity is damaged.
    #[error(
        "the server identity in {} is damaged ({reason}); restore it from a backup, or delete \
         {SERVER_KEY_FILE} and {SERVER_CERT_FILE} to make a new one (every device must then be \
         given a new enrolment code)",
        dir.display()
    )]
    BadIdentity {
        /// The data dir.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate could not be parsed.
    #[error("the certificate is not valid DER: {0}")]
    BadCertificate(String),
    /// A certificate's key is not Ed25519.
    #[error("the certificate's key is not Ed25519; dooz devices use Ed25519 identity keys")]
    NotEd25519,
    /// A fingerprint string is not 64 hex digits.
    #[error(
        "{0:?} is not a server certificate fingerprint (64 hex digits); copy it from the \
         enrolment code or from the server's start-up output"
    )]
    BadFingerprint(String),
    /// quinn could not use the rustls configuration (no TLS 1.3 initial cipher suite).
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Quic(String),
}

/// The ring crypto provider every config here uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// BLAKE3 of a certificate's DER, in lowercase hex: what devices pin.
pub fn server_fingerprint(cert_der: &[u8]) -> String {
    blake3::hash(cert_der).to_hex().to_string()
}

/// Parses a fingerprint written by [`server_fingerprint`] (case-insensitive).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint(s.to_owned());
    let hash = blake3::Hash::from_hex(s.trim()).map_err(|_| bad())?;
    Ok(*hash.as_bytes())
}

/// The raw 32-byte Ed25519 public key of a DER SubjectPublicKeyInfo.
pub fn ed25519_public_key(spki_der: &[u8]) -> Result<[u8; 32], TlsError> {
    spki_der
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .ok_or(TlsError::NotEd25519)
}

/// The SubjectPublicKeyInfo of a certificate.
fn cert_spki(cert_der: &CertificateDer<'_>) -> Result<SubjectPublicKeyInfoDer<'static>, TlsError> {
    ParsedCertificate::try_from(cert_der)
        .map(|c| c.subject_public_key_info())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))
}

/// The raw Ed25519 public key of a device certificate.
pub fn identity_key_from_cert(cert_der: &CertificateDer<'_>) -> Result<[u8; 32], TlsError> {
    ed25519_public_key(&cert_spki(cert_der)?)
}

/// The device id of an identity key: BLAKE3 of the raw 32-byte Ed25519 public key (the same
/// as `dooz_crypto::DeviceId::from_identity_key`).
pub fn device_id_from_key(identity_key: &[u8; 32]) -> DeviceId {
    DeviceId::from_bytes(*blake3::hash(identity_key).as_bytes())
}

/// The device id of a device certificate: BLAKE3 of its raw Ed25519 public key.
pub fn device_id_from_cert(cert_der: &CertificateDer<'_>) -> Result<DeviceId, TlsError> {
    Ok(device_id_from_key(&identity_key_from_cert(cert_der)?))
}

/// The raw Ed25519 key of the certificate the peer of a quinn connection presented.
///
/// `None` when the peer presented no certificate or it has no Ed25519 key (the server's
/// verifier refuses both, so on a server connection this is always `Some`).
pub fn peer_identity_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    identity_key_from_cert(certs.first()?).ok()
}

/// The device id of the peer of a quinn connection ([`peer_identity_key`] hashed).
pub fn peer_device_id(conn: &quinn::Connection) -> Option<DeviceId> {
    peer_identity_key(conn).map(|key| device_id_from_key(&key))
}

/// The ALPN protocol id the handshake of `conn` settled on.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The server's TLS identity: an Ed25519 key and its self-signed certificate.
///
/// `Debug` does not print the key.
pub struct ServerIdentity {
    key: Zeroizing<Vec<u8>>,
    cert: CertificateDer<'static>,
    fingerprint: String,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("key", &"..")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl ServerIdentity {
    /// A 32-byte key for `context`, derived from the identity's private key: the same for as
    /// long as the identity is (across restarts), and telling nothing of the private key.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.key)
    }

    /// A new random identity (not persisted).
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert = self_signed(&key, SERVER_NAME)?;
        Ok(Self::from_parts(Zeroizing::new(key.serialize_der()), cert))
    }

    /// Loads the identity persisted in `dir`, or makes one and persists it (key file mode 0600
    /// on Unix). The certificate is kept too, so the fingerprint stays the same across
    /// restarts.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let key_path = dir.join(SERVER_KEY_FILE);
        let cert_path = dir.join(SERVER_CERT_FILE);
        match (read_opt(&key_path)?, read_opt(&cert_path)?) {
            (Some(key), Some(cert)) => Self::from_persisted(dir, Zeroizing::new(key), cert),
            (None, None) => {
                let identity = Self::generate()?;
                write_atomic(&key_path, &identity.key, true)?;
                write_atomic(&cert_path, &identity.cert, false)?;
                Ok(identity)
            }
            (Some(_), None) => Err(TlsError::BadIdentity {
                dir: dir.to_owned(),
                reason: format!("{SERVER_CERT_FILE} is missing"),
            }),
            (None, Some(_)) => Err(TlsError::BadIdentity {
                dir: dir.to_owned(),
                reason: format!("{SERVER_KEY_FILE} is missing"),
            }),
        }
    }

    fn from_persisted(
        dir: &Path,
        key: Zeroizing<Vec<u8>>,
        cert: Vec<u8>,
    ) -> Result<Self, TlsError> {
        let bad = |reason: String| TlsError::BadIdentity {
            dir: dir.to_owned(),
            reason,
        };
        let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| bad(format!("{SERVER_KEY_FILE}: {e}")))?;
        let cert = CertificateDer::from(cert);
        let spki = cert_spki(&cert).map_err(|e| bad(format!("{SERVER_CERT_FILE}: {e}")))?;
        if ed25519_public_key(&spki).ok().as_ref().map(|k| &k[..]) != Some(pair.public_key_raw()) {
            return Err(bad(format!(
                "{SERVER_CERT_FILE} does not belong to {SERVER_KEY_FILE}"
            )));
        }
        Ok(Self::from_parts(key, cert))
    }

    fn from_parts(key: Zeroizing<Vec<u8>>, cert: CertificateDer<'static>) -> Self {
        let fingerprint = server_fingerprint(&cert);
        Self {
            key,
            cert,
            fingerprint,
        }
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate's fingerprint ([`server_fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }
}

/// A self-signed certificate for `key`, with `name` as its DNS subject alternative name.
fn self_signed(key: &rcgen::KeyPair, name: &str) -> Result<CertificateDer<'static>, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(params.self_signed(key)?.der().clone())
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let io_err = |source| TlsError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; directories cannot be opened for sync everywhere.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Client-certificate verifier of the server: mandatory client auth, TLS 1.3 only, accepts a
/// single self-signed certificate whose key is Ed25519, and checks the handshake signature with
/// the ring provider. Whether the device is enrolled is decided after the handshake, from
/// [`peer_device_id`], so that a refusal can carry a close code and a reason.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    provider: Arc<CryptoProvider>,
}

impl DeviceCertVerifier {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

fn invalid_cert(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(invalid_cert(TlsError::BadCertificate(
                "a device presents one self-signed certificate, not a chain".to_owned(),
            )));
        }
        ed25519_public_key(&cert_spki(end_entity).map_err(invalid_cert)?).map_err(invalid_cert)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The rustls server config of the data plane: TLS 1.3 only, ALPN `dooz/1` (and
/// [`ENROL_ALPN`]), the server's identity, and [`DeviceCertVerifier`] for mandatory client
/// certificates.
pub fn server_tls_config(identity: &ServerIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(DeviceCertVerifier::new(provider)))
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())?;
    config.alpn_protocols = vec![ALPN.to_vec(), ENROL_ALPN.to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// Server-certificate verifier of a device: accepts exactly the certificate whose
/// [fingerprint](server_fingerprint) it pins (names and dates are not checked: the pin is the
/// identity), and checks the handshake signature with the ring provider.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    /// Pins the certificate with this BLAKE3 fingerprint.
    pub fn new(fingerprint: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            fingerprint,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The fingerprint is public: no need for a constant-time comparison.
        if blake3::hash(end_entity).as_bytes() == &self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A device's client certificate: self-signed, made from its Ed25519 identity key.
///
/// `Debug` does not print the key.
pub struct DeviceCert {
    key: Zeroizing<Vec<u8>>,
    cert: CertificateDer<'static>,
}

impl fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCert")
            .field("key", &"..")
            .field("device", &self.device_id().ok())
            .finish()
    }
}

impl DeviceCert {
    /// Makes the certificate for the identity key `pkcs8_der` (an Ed25519 private key in PKCS#8
    /// v1 or v2 DER, as `dooz_crypto::DeviceSecretKeys::tls_pkcs8_der` returns).
    pub fn from_pkcs8(pkcs8_der: &[u8]) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8_der),
            &rcgen::PKCS_ED25519,
        )?;
        let cert = self_signed(&key, "dooz-device")?;
        Ok(Self {
            key: Zeroizing::new(pkcs8_der.to_vec()),
            cert,
        })
    }

    /// A certificate for a new random key (for tests and tools).
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_pkcs8(&Zeroizing::new(key.serialize_der()))
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The device id the server will derive from this certificate.
    pub fn device_id(&self) -> Result<DeviceId, TlsError> {
        device_id_from_cert(&self.cert)
    }

    /// The raw Ed25519 public key in the certificate.
    pub fn identity_key(&self) -> Result<[u8; 32], TlsError> {
        identity_key_from_cert(&self.cert)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }
}

/// The rustls client config of a device: TLS 1.3 only, ALPN `alpn` ([`ALPN`] to sync,
/// [`ENROL_ALPN`] to enrol), the server pinned by `server_fingerprint` (as printed by
/// [`server_fingerprint`]), and `device` as client certificate.
pub fn client_tls_config(
    device: &DeviceCert,
    server_fingerprint: &str,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let pin = parse_fingerprint(server_fingerprint)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(pin, provider)))
        .with_client_auth_cert(vec![device.cert.clone()], device.private_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_is_blake3_of_the_raw_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = DeviceCert::from_pkcs8(&key.serialize_der()).unwrap();
        let raw: [u8; 32] = key.public_key_raw().try_into().unwrap();
        assert_eq!(
            cert.device_id().unwrap(),
            DeviceId::from_bytes(*blake3::hash(&raw).as_bytes())
        );
        // The SPKI is the fixed prefix plus the key.
        let spki = key.public_key_der();
        assert_eq!(&spki[..12], &ED25519_SPKI_PREFIX);
        assert_eq!(ed25519_public_key(&spki).unwrap(), raw);
    }

    #[test]
    fn pkcs8_v1_keys_are_accepted() {
        // PKCS#8 v1 as dooz-crypto writes it: fixed prefix + 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[7u8; 32]);
        let a = DeviceCert::from_pkcs8(&der).unwrap();
        let b = DeviceCert::from_pkcs8(&der).unwrap();
        assert_eq!(a.device_id().unwrap(), b.device_id().unwrap());
    }

    #[test]
    fn non_ed25519_keys_are_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            device_id_from_cert(cert.der()),
            Err(TlsError::NotEd25519)
        ));
        let verifier = DeviceCertVerifier::new(crypto_provider());
        assert!(
            verifier
                .verify_client_cert(cert.der(), &[], UnixTime::now())
                .is_err()
        );
        assert!(ed25519_public_key(&[0u8; 44]).is_err());
        assert!(ed25519_public_key(&ED25519_SPKI_PREFIX).is_err());
    }

    #[test]
    fn identity_persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServerIdentity::load_or_create(dir.path()).unwrap();
        let b = ServerIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), server_fingerprint(a.cert_der()));
        assert_eq!(a.fingerprint().len(), 64);
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.key.as_slice())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(SERVER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn mismatched_or_half_identity_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(dir.path()).unwrap();
        let other = ServerIdentity::generate().unwrap();
        fs::write(dir.path().join(SERVER_CERT_FILE), other.cert_der()).unwrap();
        let err = ServerIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        fs::remove_file(dir.path().join(SERVER_CERT_FILE)).unwrap();
        let err = ServerIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
    }

    #[test]
    fn fingerprints_parse() {
        let id = ServerIdentity::generate().unwrap();
        let pin = parse_fingerprint(&id.fingerprint().to_uppercase()).unwrap();
        assert_eq!(&pin, blake3::hash(id.cert_der()).as_bytes());
        assert!(parse_fingerprint("abc").is_err());
        let verifier = PinnedServerVerifier::new(pin, crypto_provider());
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        assert!(
            verifier
                .verify_server_cert(id.cert_der(), &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let other = ServerIdentity::generate().unwrap();
        assert!(
            verifier
                .verify_server_cert(other.cert_der(), &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn configs_build() {
        let id = ServerIdentity::generate().unwrap();
        server_tls_config(&id).unwrap();
        let dev = DeviceCert::generate().unwrap();
        client_tls_config(&dev, id.fingerprint(), ALPN).unwrap();
    }
}

//! The client's TLS: the device certificate made from its identity key, and the verifier that
//! pins the server certificate by fingerprint. Modelled on (and compatible with) the server's
//! `tls` module: fingerprint = BLAKE3 of the certificate DER, device id = BLAKE3 of the raw
//! Ed25519 public key in the client certificate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use zeroize::Zeroizing;

/// The name clients connect with; the certificate is pinned, so the name is not checked.
pub(crate) const SERVER_NAME: &str = "dooz-server";

/// BLAKE3 of a certificate's DER, in lowercase hex: the form of a server fingerprint people
/// see (the enrolment code and the server's start-up output carry it).
pub fn server_fingerprint_hex(fingerprint: &[u8; 32]) -> String {
    blake3::Hash::from(*fingerprint).to_hex().to_string()
}

/// Parses a server fingerprint (64 hex digits, case-insensitive).
pub fn parse_server_fingerprint(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s.trim()).ok().map(|h| *h.as_bytes())
}

pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the certificate whose BLAKE3 is the pinned fingerprint, and remembers when
/// it saw another one (so that the failed handshake can be reported as a pin mismatch).
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: Arc<AtomicBool>,
}

impl PinnedServerVerifier {
    pub(crate) fn new(
        fingerprint: [u8; 32],
        provider: Arc<CryptoProvider>,
        mismatch: Arc<AtomicBool>,
    ) -> Self {
        Self {
            fingerprint,
            provider,
            mismatch,
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
            self.mismatch.store(true, Ordering::Relaxed);
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

/// The device's client certificate: self-signed by its Ed25519 identity key. The server only
/// looks at the key.
pub(crate) struct DeviceCert {
    key: Zeroizing<Vec<u8>>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCert").finish_non_exhaustive()
    }
}

impl DeviceCert {
    /// The certificate for the identity key `pkcs8_der` (Ed25519, PKCS#8 DER).
    pub(crate) fn from_pkcs8(pkcs8_der: &[u8]) -> Result<Self, rcgen::Error> {
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8_der),
            &rcgen::PKCS_ED25519,
        )?;
        let mut params = rcgen::CertificateParams::new(vec!["dooz-device".to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dooz-device");
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            key: Zeroizing::new(pkcs8_der.to_vec()),
            cert,
        })
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }
}

/// TLS 1.3 only, ALPN `alpn`, the server pinned, `device` as client certificate.
pub(crate) fn client_tls_config(
    device: &DeviceCert,
    fingerprint: [u8; 32],
    alpn: &[u8],
    mismatch: Arc<AtomicBool>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crypto_provider();
    let verifier = PinnedServerVerifier::new(fingerprint, provider.clone(), mismatch);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![device.cert.clone()], device.private_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_accepts_only_its_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = DeviceCert::from_pkcs8(&key.serialize_der()).unwrap().cert;
        let pin = *blake3::hash(&cert).as_bytes();
        let flag = Arc::new(AtomicBool::new(false));
        let v = PinnedServerVerifier::new(pin, crypto_provider(), flag.clone());
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        assert!(
            v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert!(!flag.load(Ordering::Relaxed));
        let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let other = DeviceCert::from_pkcs8(&other_key.serialize_der())
            .unwrap()
            .cert;
        assert!(
            v.verify_server_cert(&other, &[], &name, &[], UnixTime::now())
                .is_err()
        );
        assert!(flag.load(Ordering::Relaxed));
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp = [0xabu8; 32];
        let hex = server_fingerprint_hex(&fp);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_server_fingerprint(&hex.to_uppercase()), Some(fp));
        assert_eq!(parse_server_fingerprint("xyz"), None);
    }

    #[test]
    fn device_keys_make_a_certificate() {
        let keys = dooz_crypto::DeviceSecretKeys::generate().unwrap();
        let dev = DeviceCert::from_pkcs8(&keys.tls_pkcs8_der()).unwrap();
        client_tls_config(&dev, [0; 32], b"dooz/1", Arc::default()).unwrap();
    }
}

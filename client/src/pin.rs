//! TLS certificate handling for attested connections.
//!
//! A server's certificate is self-signed; what makes it trustworthy is the evidence that
//! binds its key. So the verifier accepts a certificate in two ways only:
//! - `Capture`: any certificate, for the one connection on which the client attests right
//!   after the handshake (the handshake signature is still checked);
//! - `Pinned`: only a certificate whose SubjectPublicKeyInfo hashes to the pinned value;
//!   anything else fails with `ApplicationVerificationFailure`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use veil_attestation::binding::spki_sha256;
use veil_attestation::Certificate;

/// How a connection treats the server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMode {
    /// Accept any certificate (the connection will be attested before anything is sent).
    Capture,
    /// Accept only this SPKI SHA-256.
    Pinned([u8; 32]),
}

/// The rustls verifier for [`PinMode`].
#[derive(Debug)]
pub struct PinVerifier {
    mode: PinMode,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinVerifier {
    /// A verifier in `mode`.
    pub fn new(mode: PinMode, provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        PinVerifier { mode, provider }
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo, if it parses.
pub fn cert_spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    Certificate::from_der(der)
        .ok()
        .map(|c| spki_sha256(&c.spki_der()))
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.mode {
            PinMode::Capture => Ok(ServerCertVerified::assertion()),
            PinMode::Pinned(pin) => match cert_spki_sha256(end_entity.as_ref()) {
                Some(h) if h == pin => Ok(ServerCertVerified::assertion()),
                _ => Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                )),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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

/// A TLS 1.3 client configuration (ring provider) with this pin mode.
pub fn client_config(mode: PinMode) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(mode, provider)))
        .with_no_client_auth();
    Arc::new(config)
}

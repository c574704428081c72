//! The server's TLS identity: a P-256 key and self-signed certificate made at start, in
//! memory only; TLS 1.3 only, on rustls' ring provider.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS configuration and the hash the evidence binds.
pub struct TlsIdentity {
    /// rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TlsIdentity(spki sha256 {})",
            hex::encode(self.spki_sha256)
        )
    }
}

/// Makes a fresh key and certificate.
///
/// # Errors
/// If key generation or the TLS configuration fails.
pub fn generate(names: Vec<String>) -> anyhow::Result<TlsIdentity> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "veil-server");
    let cert = params.self_signed(&key)?;
    let der = cert.der().to_vec();
    let parsed = veil_attestation::Certificate::from_der(&der)?;
    let spki_sha256 = veil_attestation::binding::spki_sha256(&parsed.spki_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    Ok(TlsIdentity {
        config: Arc::new(config),
        spki_sha256,
    })
}

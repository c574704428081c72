//! Certificates and the chain ARK → ASK/ASVK → VCEK/VLEK, for AMD and for the mock platform.
//!
//! AMD's roots (ARK, ASK and ASVK of Milan, Genoa and Turin) are built in; a root that
//! comes with the evidence is only accepted if it is byte-for-byte one of them. A mock
//! root is trusted only when the verifier names it (by the SHA-256 of its DER).

use std::sync::OnceLock;
use std::time::SystemTime;

use der::{Decode, DecodePem, Encode};
use ring::digest;
use sev::certs::snp::Verifiable as _;

use crate::check::{Check, Outcomes};
use crate::report::{Product, SigningKey, Tcb};

/// AMD OIDs in VCEK/VLEK certificates (VCEK spec 57230, Table 8).
pub(crate) mod oid {
    use der::asn1::ObjectIdentifier as Oid;
    pub(crate) const PRODUCT_NAME: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.2");
    pub(crate) const BL_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    pub(crate) const TEE_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    pub(crate) const SNP_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    pub(crate) const UCODE_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    pub(crate) const FMC_SPL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    pub(crate) const HW_ID: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.4");
    pub(crate) const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
    pub(crate) const RSASSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
    pub(crate) const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub(crate) const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub(crate) const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");
}

/// Why bytes are not a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Neither DER nor PEM of an X.509 certificate.
    #[error("not an X.509 certificate in DER or PEM: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}

/// An X.509 certificate, with its DER bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    cert: x509_cert::Certificate,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Certificate({:?} issued by {:?})",
            self.subject_cn(),
            self.issuer_cn()
        )
    }
}

impl Certificate {
    /// Parses DER.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`].
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let cert =
            x509_cert::Certificate::from_der(der).map_err(|e| CertificateError::Malformed {
                reason: e.to_string(),
            })?;
        Ok(Certificate {
            der: der.to_vec(),
            cert,
        })
    }

    /// Parses one PEM certificate.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`].
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertificateError> {
        let cert =
            x509_cert::Certificate::from_pem(pem).map_err(|e| CertificateError::Malformed {
                reason: e.to_string(),
            })?;
        let der = cert.to_der().map_err(|e| CertificateError::Malformed {
            reason: e.to_string(),
        })?;
        Certificate::from_der(&der)
    }

    /// Parses every certificate in a PEM bundle, or one DER certificate.
    ///
    /// # Errors
    /// [`CertificateError::Malformed`].
    pub fn all_from_pem_or_der(bytes: &[u8]) -> Result<Vec<Self>, CertificateError> {
        if bytes.first() == Some(&0x30) {
            return Ok(vec![Certificate::from_der(bytes)?]);
        }
        let certs = x509_cert::Certificate::load_pem_chain(bytes).map_err(|e| {
            CertificateError::Malformed {
                reason: e.to_string(),
            }
        })?;
        certs
            .iter()
            .map(|c| {
                let der = c.to_der().map_err(|e| CertificateError::Malformed {
                    reason: e.to_string(),
                })?;
                Certificate::from_der(&der)
            })
            .collect()
    }

    /// The DER bytes.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// PEM text of the certificate.
    pub fn to_pem(&self) -> String {
        use der::EncodePem;
        self.cert
            .to_pem(der::pem::LineEnding::LF)
            .expect("a decoded certificate re-encodes")
    }

    /// The DER SubjectPublicKeyInfo of the certificate's key (what a TLS binding hashes).
    pub fn spki_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .expect("a decoded SPKI re-encodes")
    }

    /// SHA-256 of the DER bytes, hex: how a policy names a mock root.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint_bytes())
    }

    /// SHA-256 of the DER, as bytes.
    pub fn fingerprint_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, &self.der).as_ref());
        out
    }

    /// The subject's common name.
    pub fn subject_cn(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.subject)
    }

    /// The issuer's common name.
    pub fn issuer_cn(&self) -> Option<String> {
        common_name(&self.cert.tbs_certificate.issuer)
    }

    /// The subject's whole name.
    pub(crate) fn subject_name(&self) -> &x509_cert::name::Name {
        &self.cert.tbs_certificate.subject
    }

    /// The serial number's bytes (big-endian, as encoded).
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate.serial_number.as_bytes()
    }

    /// Whether `at` lies within the certificate's validity period.
    pub fn valid_at(&self, at: SystemTime) -> bool {
        let v = &self.cert.tbs_certificate.validity;
        v.not_before.to_system_time() <= at && at <= v.not_after.to_system_time()
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_before
            .to_system_time()
    }

    /// End of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.cert
            .tbs_certificate
            .validity
            .not_after
            .to_system_time()
    }

    fn validity_text(&self) -> String {
        let v = &self.cert.tbs_certificate.validity;
        format!("{} .. {}", v.not_before, v.not_after)
    }

    fn extension(&self, oid: der::asn1::ObjectIdentifier) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    fn extension_u8(&self, oid: der::asn1::ObjectIdentifier) -> Option<u8> {
        u8::from_der(self.extension(oid)?).ok()
    }

    /// The productName extension (`Milan-B0`, `Genoa`, `Turin`, `Mock`).
    pub fn product_name(&self) -> Option<String> {
        let raw = self.extension(oid::PRODUCT_NAME)?;
        der::asn1::Ia5StringRef::from_der(raw)
            .ok()
            .map(|s| s.as_str().to_owned())
    }

    /// The TCB the VCEK/VLEK certifies, from its SPL extensions.
    pub fn tcb(&self, product: Product) -> Option<Tcb> {
        Some(Tcb {
            fmc: if product == Product::Turin {
                Some(self.extension_u8(oid::FMC_SPL)?)
            } else {
                None
            },
            bootloader: self.extension_u8(oid::BL_SPL)?,
            tee: self.extension_u8(oid::TEE_SPL)?,
            snp: self.extension_u8(oid::SNP_SPL)?,
            microcode: self.extension_u8(oid::UCODE_SPL)?,
        })
    }

    /// The hwID extension: the chip id (64 bytes; 8 on Turin). VLEKs have none.
    pub fn hardware_id(&self) -> Option<&[u8]> {
        self.extension(oid::HW_ID)
    }

    /// The subject's P-384 public key (uncompressed SEC1 point), if it is one.
    pub(crate) fn p384_key(&self) -> Option<&[u8]> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != oid::EC_PUBLIC_KEY {
            return None;
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()?
            .decode_as::<der::asn1::ObjectIdentifier>()
            .ok()?;
        let point = spki.subject_public_key.as_bytes()?;
        (curve == oid::SECP384R1 && point.len() == 97 && point[0] == 4).then_some(point)
    }

    /// Verifies an ECDSA P-384/SHA-384 signature by this certificate's key.
    pub(crate) fn verify_p384(&self, message: &[u8], signature: &[u8], der_encoded: bool) -> bool {
        use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED};
        let Some(key) = self.p384_key() else {
            return false;
        };
        let alg = if der_encoded {
            &ECDSA_P384_SHA384_ASN1
        } else {
            &ECDSA_P384_SHA384_FIXED
        };
        UnparsedPublicKey::new(alg, key)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies an RSASSA-PSS signature (SHA-384, MGF1-SHA-384, 48-byte salt: how AMD's
    /// ARK signs) by this certificate's RSA key.
    pub(crate) fn verify_rsa_pss_sha384(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{UnparsedPublicKey, RSA_PSS_2048_8192_SHA384};
        const RSA_ENCRYPTION: der::asn1::ObjectIdentifier =
            der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION && spki.algorithm.oid != oid::RSASSA_PSS {
            return false;
        }
        let Some(key) = spki.subject_public_key.as_bytes() else {
            return false;
        };
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA384, key)
            .verify(message, signature)
            .is_ok()
    }

    /// Whether `self` carries a valid signature by `issuer`'s key (RSA-PSS/SHA-384 as
    /// AMD signs, or ECDSA P-384/SHA-384 as the mock platform signs).
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        let alg = &self.cert.signature_algorithm.oid;
        if alg != &self.cert.tbs_certificate.signature.oid {
            return false;
        }
        if *alg == oid::RSASSA_PSS {
            let issuer = sev::certs::snp::Certificate::from(issuer.cert.clone());
            let subject = sev::certs::snp::Certificate::from(self.cert.clone());
            (&issuer, &subject).verify().is_ok()
        } else if *alg == oid::ECDSA_SHA384 {
            let (Ok(tbs), Some(sig)) = (
                self.cert.tbs_certificate.to_der(),
                self.cert.signature.as_bytes(),
            ) else {
                return false;
            };
            issuer.verify_p384(&tbs, sig, true)
        } else {
            false
        }
    }
}

pub(crate) fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid::COMMON_NAME)
        .and_then(|atv| {
            let raw = atv.value.to_der().ok()?;
            if let Ok(s) = der::asn1::Utf8StringRef::from_der(&raw) {
                return Some(s.as_str().to_owned());
            }
            if let Ok(s) = der::asn1::PrintableStringRef::from_der(&raw) {
                return Some(s.as_str().to_owned());
            }
            der::asn1::Ia5StringRef::from_der(&raw)
                .ok()
                .map(|s| s.as_str().to_owned())
        })
}

/// The built-in AMD certificates of one product.
pub struct AmdRoots {
    /// AMD root key (self-signed).
    pub ark: Certificate,
    /// AMD SEV key: signs VCEKs.
    pub ask: Certificate,
    /// AMD SEV VLEK key: signs VLEKs.
    pub asvk: Certificate,
    /// Whether the ARK is self-signed and signs the ASK and ASVK (checked once, at load).
    verified: bool,
}

impl AmdRoots {
    /// Whether `cert` is one of these built-in certificates, already verified at load.
    fn known_good(&self, cert: &Certificate) -> bool {
        self.verified
            && [&self.ark, &self.ask, &self.asvk]
                .iter()
                .any(|c| c.as_der() == cert.as_der())
    }
}

/// The built-in AMD roots of `product` (None for the mock product).
pub fn amd_roots(product: Product) -> Option<&'static AmdRoots> {
    static ROOTS: OnceLock<[AmdRoots; 3]> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let load = |ark: &[u8], ask: &[u8], asvk: &[u8]| {
            let ark = Certificate::from_pem(ark).expect("built-in ARK parses");
            let ask = Certificate::from_pem(ask).expect("built-in ASK parses");
            let asvk = Certificate::from_pem(asvk).expect("built-in ASVK parses");
            let verified =
                ark.is_signed_by(&ark) && ask.is_signed_by(&ark) && asvk.is_signed_by(&ark);
            AmdRoots {
                ark,
                ask,
                asvk,
                verified,
            }
        };
        [
            load(
                milan::ARK,
                milan::ASK,
                include_bytes!("roots/asvk_milan.pem"),
            ),
            load(
                genoa::ARK,
                genoa::ASK,
                include_bytes!("roots/asvk_genoa.pem"),
            ),
            load(
                turin::ARK,
                turin::ASK,
                include_bytes!("roots/asvk_turin.pem"),
            ),
        ]
    });
    match product {
        Product::Milan => Some(&roots[0]),
        Product::Genoa => Some(&roots[1]),
        Product::Turin => Some(&roots[2]),
        Product::Mock => None,
    }
}

/// Which roots a verifier trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnchorKind {
    /// The built-in AMD roots.
    Amd,
    /// Mock roots named by the policy.
    Mock,
}

/// What a verified chain tells about the report's signer.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedVek {
    pub(crate) product: Product,
    pub(crate) kind: SigningKey,
    pub(crate) vek: Certificate,
    /// The root the chain ends at.
    pub(crate) root: Certificate,
    /// The ASK or ASVK (or the mock intermediate).
    pub(crate) intermediate: Certificate,
}

/// Verifies VEK ← intermediate ← root and records the outcomes of the chain checks.
///
/// `certs` are the certificates that came with the evidence (any order; the VEK first
/// is not required). `mock_roots` are the mock roots the policy trusts.
pub(crate) fn verify_chain(
    vek: &Certificate,
    certs: &[Certificate],
    anchor: AnchorKind,
    mock_roots: &[Certificate],
    now: SystemTime,
    out: &mut Outcomes,
) -> Option<VerifiedVek> {
    let subject = vek.subject_cn().unwrap_or_default();
    let issuer = vek.issuer_cn().unwrap_or_default();
    let kind = match subject.as_str() {
        "SEV-VCEK" => SigningKey::Vcek,
        "SEV-VLEK" => SigningKey::Vlek,
        other => {
            out.fail(
                Check::CertificateChain,
                format!("signing certificate is {other:?}, not SEV-VCEK or SEV-VLEK"),
            );
            return None;
        }
    };
    let prefix = if kind == SigningKey::Vlek {
        "SEV-VLEK-"
    } else {
        "SEV-"
    };
    let Some(product) = issuer.strip_prefix(prefix).and_then(Product::from_name) else {
        out.fail(
            Check::Product,
            format!("{kind} issuer {issuer:?} names no known product"),
        );
        return None;
    };
    let product_name = vek.product_name();
    if product_name.as_deref().and_then(Product::from_name) != Some(product) {
        out.fail(
            Check::Product,
            format!("{kind} productName {product_name:?} disagrees with its issuer {issuer:?}"),
        );
        return None;
    }

    // The root and the intermediate.
    let ark_cn = format!("ARK-{}", product.name());
    let (root, intermediate) = match anchor {
        AnchorKind::Amd => {
            let Some(builtin) = amd_roots(product) else {
                out.fail(
                    Check::TrustAnchor,
                    "MOCK evidence cannot chain to an AMD root",
                );
                return None;
            };
            if let Some(given) = certs
                .iter()
                .find(|c| c.subject_cn().as_deref() == Some(&ark_cn))
            {
                if given.as_der() != builtin.ark.as_der() {
                    out.fail(
                        Check::TrustAnchor,
                        format!("{ark_cn} in the evidence is not AMD's built-in root"),
                    );
                    return None;
                }
            }
            let default = if kind == SigningKey::Vlek {
                &builtin.asvk
            } else {
                &builtin.ask
            };
            let intermediate = certs
                .iter()
                .find(|c| c.subject_cn().as_deref() == Some(issuer.as_str()))
                .unwrap_or(default)
                .clone();
            out.pass(Check::TrustAnchor, format!("built-in AMD {ark_cn}"));
            (builtin.ark.clone(), intermediate)
        }
        AnchorKind::Mock => {
            if product != Product::Mock {
                out.fail(
                    Check::TrustAnchor,
                    format!("mock evidence names the AMD product {product}"),
                );
                return None;
            }
            let Some(intermediate) = certs
                .iter()
                .find(|c| c.subject_cn().as_deref() == Some(issuer.as_str()))
                .cloned()
            else {
                out.fail(
                    Check::CertificateChain,
                    format!("the evidence lacks the {issuer} certificate"),
                );
                return None;
            };
            let Some(root) = mock_roots.iter().find(|r| intermediate.is_signed_by(r)) else {
                // The caller passes only the trusted roots the evidence carries, so an empty
                // list means "none of them", not that nothing is trusted at all.
                let detail = match certs.iter().find(|c| intermediate.is_signed_by(c)) {
                    Some(root) => format!(
                        "MOCK root {} is not one the verifier trusts (policy mock_roots or --mock-root)",
                        &root.fingerprint()[..16]
                    ),
                    None => "MOCK root not trusted: the chain does not lead to a mock root the verifier trusts"
                        .to_owned(),
                };
                out.fail(Check::TrustAnchor, detail);
                return None;
            };
            out.pass(
                Check::TrustAnchor,
                format!(
                    "MOCK root {} (named by the policy)",
                    &root.fingerprint()[..16]
                ),
            );
            (root.clone(), intermediate)
        }
    };

    let mut chain_ok = true;
    let mut problems = Vec::new();
    // Every certificate that came with the evidence must be part of this one chain.
    for extra in certs {
        if extra.as_der() != root.as_der() && extra.as_der() != intermediate.as_der() {
            problems.push(format!(
                "{} (issued by {}) is not part of the {} chain",
                extra.subject_cn().unwrap_or_default(),
                extra.issuer_cn().unwrap_or_default(),
                product
            ));
        }
    }
    // Built-in AMD certificates were verified once when loaded.
    let known_good = |c: &Certificate| {
        anchor == AnchorKind::Amd && amd_roots(product).is_some_and(|r| r.known_good(c))
    };
    if root.subject_cn().as_deref() != Some(ark_cn.as_str())
        || !(known_good(&root) || root.is_signed_by(&root))
    {
        problems.push(format!("{ark_cn} is not self-signed"));
    }
    if intermediate.issuer_cn().as_deref() != Some(ark_cn.as_str())
        || !(known_good(&intermediate) || intermediate.is_signed_by(&root))
    {
        problems.push(format!("{issuer} is not signed by {ark_cn}"));
    }
    if !vek.is_signed_by(&intermediate) {
        problems.push(format!("{subject} is not signed by {issuer}"));
    }
    if !problems.is_empty() {
        chain_ok = false;
        out.fail(Check::CertificateChain, problems.join("; "));
    } else {
        out.pass(
            Check::CertificateChain,
            format!("{ark_cn} → {issuer} → {subject}"),
        );
    }

    let expired: Vec<String> = [&root, &intermediate, vek]
        .iter()
        .filter(|c| !c.valid_at(now))
        .map(|c| {
            format!(
                "{} (valid {})",
                c.subject_cn().unwrap_or_default(),
                c.validity_text()
            )
        })
        .collect();
    if expired.is_empty() {
        out.pass(Check::CertificateValidity, "every certificate is valid now");
    } else {
        out.fail(
            Check::CertificateValidity,
            format!("not valid at the appraisal time: {}", expired.join(", ")),
        );
    }

    if vek.p384_key().is_none() {
        out.fail(
            Check::CertificateChain,
            format!("{subject} does not hold a P-384 key"),
        );
        return None;
    }
    chain_ok.then(|| VerifiedVek {
        product,
        kind,
        vek: vek.clone(),
        root,
        intermediate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roots_chain_up() {
        for product in [Product::Milan, Product::Genoa, Product::Turin] {
            let roots = amd_roots(product).expect("AMD product has roots");
            assert!(
                roots.ark.is_signed_by(&roots.ark),
                "{product} ARK self-signed"
            );
            assert!(
                roots.ask.is_signed_by(&roots.ark),
                "{product} ASK under ARK"
            );
            assert!(
                roots.asvk.is_signed_by(&roots.ark),
                "{product} ASVK under ARK"
            );
            assert!(roots.verified);
            assert_eq!(
                roots.ark.subject_cn().as_deref(),
                Some(format!("ARK-{}", product.name()).as_str())
            );
        }
    }

    /// The TBS bytes and the signature of a certificate, as sent.
    fn signed_parts(cert: &Certificate) -> (Vec<u8>, Vec<u8>) {
        use der::Reader as _;
        let mut reader = der::SliceReader::new(cert.as_der()).expect("DER");
        let tbs = reader
            .sequence(|r| {
                let tbs = r.tlv_bytes()?.to_vec();
                r.tlv_bytes()?;
                r.tlv_bytes()?;
                Ok(tbs)
            })
            .expect("a certificate is three elements");
        let sig = cert.cert.signature.as_bytes().expect("octets").to_vec();
        (tbs, sig)
    }

    #[test]
    fn the_rsa_pss_check_that_crls_use_verifies_amds_own_signatures() {
        // AMD signs its CRLs as it signs its certificates: RSA-PSS, SHA-384, salt 48, by
        // the ARK. The check used for CRLs must accept what the ARKs signed, and nothing
        // signed by another product's ARK.
        let genoa = amd_roots(Product::Genoa).expect("roots");
        for product in [Product::Milan, Product::Genoa, Product::Turin] {
            let roots = amd_roots(product).expect("roots");
            for signed in [&roots.ark, &roots.ask, &roots.asvk] {
                let (tbs, sig) = signed_parts(signed);
                assert!(roots.ark.verify_rsa_pss_sha384(&tbs, &sig), "{product}");
                if product != Product::Genoa {
                    assert!(!genoa.ark.verify_rsa_pss_sha384(&tbs, &sig), "{product}");
                }
                let mut changed = tbs.clone();
                changed[tbs.len() / 2] ^= 1;
                assert!(
                    !roots.ark.verify_rsa_pss_sha384(&changed, &sig),
                    "{product}"
                );
            }
        }
    }

    #[test]
    fn roots_of_one_product_do_not_sign_another() {
        let milan = amd_roots(Product::Milan).expect("roots");
        let genoa = amd_roots(Product::Genoa).expect("roots");
        assert!(!genoa.ask.is_signed_by(&milan.ark));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(Certificate::from_der(b"\x30\x03\x02\x01\x00").is_err());
        assert!(Certificate::all_from_pem_or_der(b"hello")
            .map(|v| v.is_empty())
            .unwrap_or(true));
    }
}

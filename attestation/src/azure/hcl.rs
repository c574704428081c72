//! The Azure HCL report (vTPM NV index `0x01400001`) and its runtime claims.
//!
//! ```text
//! 0x000  HCL header, 0x20 bytes (little-endian u32s): "HCLA" ‖ version ‖ report_size
//!        ‖ request_type ‖ status ‖ 12 reserved
//! 0x020  the 1184-byte SNP ATTESTATION_REPORT (signed by the VCEK, at VMPL 0)
//! 0x4C0  IGVM request data header, 0x14 bytes: data_size ‖ version ‖ report_type (2 = SNP)
//!        ‖ user_data_hash_type (1 SHA-256, 2 SHA-384, 3 SHA-512) ‖ variable_data_size
//! 0x4D4  variable data: the runtime-claims JSON, variable_data_size bytes
//! ```
//!
//! The paravisor sets REPORT_DATA to the hash of the variable data, zero-padded to 64
//! bytes, so the runtime claims (and the vTPM attestation key they hold, JWK
//! `"kid": "HCLAkPub"`) are as genuine as the SNP report.

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::tpm::Reader;
use super::AzureError;
use crate::report::{Report, REPORT_LEN};

/// The HCL report's magic.
pub const HCL_MAGIC: [u8; 4] = *b"HCLA";
/// Where the SNP report starts.
pub const SNP_REPORT_OFFSET: usize = 0x20;
/// Where the IGVM request data header starts (just after the SNP report).
pub const IGVM_HEADER_OFFSET: usize = SNP_REPORT_OFFSET + REPORT_LEN;
/// Length of the IGVM request data header.
pub const IGVM_HEADER_LEN: usize = 0x14;
/// Where the runtime claims start.
pub const RUNTIME_CLAIMS_OFFSET: usize = IGVM_HEADER_OFFSET + IGVM_HEADER_LEN;
/// `report_type` of an SNP HCL report (4 would be TDX).
pub const REPORT_TYPE_SNP: u32 = 2;
/// The JWK key id of the vTPM attestation key in the runtime claims.
pub const AK_KID: &str = "HCLAkPub";
/// Largest HCL report accepted (the NV index is 2600 bytes on today's CVMs).
pub const MAX_HCL_REPORT_LEN: usize = 16 * 1024;

/// The hash the paravisor puts in REPORT_DATA over the runtime claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimsHash {
    /// `user_data_hash_type` 1.
    Sha256,
    /// `user_data_hash_type` 2.
    Sha384,
    /// `user_data_hash_type` 3.
    Sha512,
}

impl std::fmt::Display for ClaimsHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimsHash::Sha256 => "SHA-256",
            ClaimsHash::Sha384 => "SHA-384",
            ClaimsHash::Sha512 => "SHA-512",
        })
    }
}

impl ClaimsHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            ClaimsHash::Sha256 => Sha256::digest(data).to_vec(),
            ClaimsHash::Sha384 => Sha384::digest(data).to_vec(),
            ClaimsHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// An Azure HCL report, kept as raw bytes; fields are read at fixed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    raw: Vec<u8>,
    version: u32,
    hash: ClaimsHash,
    claims_len: usize,
}

fn le32(r: &mut Reader<'_>) -> Result<u32, AzureError> {
    Ok(r.u32()?.swap_bytes())
}

impl HclReport {
    /// Parses an HCL report: the header, the SNP report's place, the IGVM request data
    /// header and the runtime claims' bounds. The SNP report itself is not parsed here
    /// ([`HclReport::snp_report`]).
    ///
    /// # Errors
    /// [`AzureError`] for a wrong magic, a truncation, a report type other than SNP, an
    /// unknown hash type, or runtime claims beyond the data. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AzureError> {
        if bytes.len() > MAX_HCL_REPORT_LEN {
            return Err(AzureError::TooLong {
                what: "HCL report",
                len: bytes.len(),
                max: MAX_HCL_REPORT_LEN,
            });
        }
        let mut r = Reader::new(bytes, "HCL report");
        let magic = r.take(4)?;
        if magic != HCL_MAGIC {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(AzureError::Magic {
                what: "HCL report",
                found: u32::from_be_bytes(m),
            });
        }
        let version = le32(&mut r)?;
        let _report_size = le32(&mut r)?;
        let _request_type = le32(&mut r)?;
        let _status = le32(&mut r)?;
        r.take(12)?;
        r.take(REPORT_LEN)?;
        let data_size = le32(&mut r)? as usize;
        let _data_version = le32(&mut r)?;
        let report_type = le32(&mut r)?;
        if report_type != REPORT_TYPE_SNP {
            return Err(AzureError::HclReportType { found: report_type });
        }
        let hash = match le32(&mut r)? {
            1 => ClaimsHash::Sha256,
            2 => ClaimsHash::Sha384,
            3 => ClaimsHash::Sha512,
            found => return Err(AzureError::ClaimsHashType { found }),
        };
        let claims_len = le32(&mut r)? as usize;
        if claims_len.saturating_add(IGVM_HEADER_LEN) > data_size {
            return Err(AzureError::TooLong {
                what: "variable_data_size",
                len: claims_len,
                max: data_size.saturating_sub(IGVM_HEADER_LEN),
            });
        }
        r.take(claims_len)?;
        Ok(HclReport {
            raw: bytes.to_vec(),
            version,
            hash,
            claims_len,
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// The HCL header's version (1 and 2 are known).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The hash REPORT_DATA holds over the runtime claims.
    pub fn claims_hash(&self) -> ClaimsHash {
        self.hash
    }
    /// The SNP report's 1184 bytes, `0x20..0x4C0`.
    pub fn snp_report_bytes(&self) -> &[u8] {
        &self.raw[SNP_REPORT_OFFSET..IGVM_HEADER_OFFSET]
    }
    /// The SNP report.
    ///
    /// # Errors
    /// [`AzureError::Report`] if its version is unknown.
    pub fn snp_report(&self) -> Result<Report, AzureError> {
        Ok(Report::from_bytes(self.snp_report_bytes())?)
    }
    /// The runtime claims' bytes, exactly as hashed.
    pub fn runtime_claims_bytes(&self) -> &[u8] {
        &self.raw[RUNTIME_CLAIMS_OFFSET..RUNTIME_CLAIMS_OFFSET + self.claims_len]
    }
    /// The REPORT_DATA the paravisor puts in the SNP report: the claims' hash, zero-padded.
    pub fn expected_report_data(&self) -> [u8; 64] {
        let digest = self.hash.digest(self.runtime_claims_bytes());
        let mut out = [0u8; 64];
        out[..digest.len()].copy_from_slice(&digest);
        out
    }
    /// The runtime claims, parsed.
    ///
    /// # Errors
    /// [`AzureError::Claims`] if they are not the JSON object Azure writes.
    pub fn runtime_claims(&self) -> Result<RuntimeClaims, AzureError> {
        RuntimeClaims::from_json(self.runtime_claims_bytes())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ClaimsFile {
    #[serde(default)]
    keys: Vec<Jwk>,
    #[serde(default, rename = "vm-configuration")]
    vm_configuration: Option<serde_json::Value>,
    #[serde(default, rename = "user-data")]
    user_data: Option<String>,
}

/// The runtime claims of an HCL report: the paravisor's JSON. Unknown members are kept
/// out of the way, not refused: Azure adds some now and then.
#[derive(Debug, Clone)]
pub struct RuntimeClaims {
    file: ClaimsFile,
}

impl RuntimeClaims {
    /// Parses the runtime-claims JSON (trailing NUL padding ignored).
    ///
    /// # Errors
    /// [`AzureError::Claims`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, AzureError> {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let file =
            serde_json::from_slice(&bytes[..end]).map_err(|e| AzureError::Claims(e.to_string()))?;
        Ok(RuntimeClaims { file })
    }

    /// `user-data`: what the guest asked the paravisor to include (hex text), if any.
    pub fn user_data(&self) -> Option<&str> {
        self.file.user_data.as_deref()
    }

    /// `vm-configuration`, as Azure wrote it.
    pub fn vm_configuration(&self) -> Option<&serde_json::Value> {
        self.file.vm_configuration.as_ref()
    }

    /// The vTPM attestation key: the one RSA JWK with `"kid": "HCLAkPub"`.
    ///
    /// # Errors
    /// [`AzureError::AttestationKey`] if there is none, more than one, or it is not a
    /// valid RSA public key.
    pub fn attestation_key(&self) -> Result<AttestationKey, AzureError> {
        let mut found = self
            .file
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(AK_KID));
        let key = found
            .next()
            .ok_or_else(|| AzureError::AttestationKey(format!("no {AK_KID} key")))?;
        if found.next().is_some() {
            return Err(AzureError::AttestationKey(format!(
                "more than one {AK_KID} key"
            )));
        }
        if key.kty.as_deref() != Some("RSA") {
            return Err(AzureError::AttestationKey(format!(
                "{AK_KID} is a {:?} key, not RSA",
                key.kty
            )));
        }
        let field = |v: &Option<String>, name: &str| {
            let text = v
                .as_deref()
                .ok_or_else(|| AzureError::AttestationKey(format!("{AK_KID} has no {name}")))?;
            super::base64_any(text)
                .map_err(|e| AzureError::AttestationKey(format!("{AK_KID}.{name}: {e}")))
        };
        AttestationKey::from_components(&field(&key.n, "n")?, &field(&key.e, "e")?)
    }
}

/// The vTPM attestation key: RSA, signing quotes with RSASSA-PKCS1-v1_5 and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationKey {
    key: rsa::RsaPublicKey,
}

impl AttestationKey {
    /// An RSA public key from its big-endian modulus and exponent.
    ///
    /// # Errors
    /// [`AzureError::AttestationKey`] if they are not a valid RSA key of 2048 to 4096 bits.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, AzureError> {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|err| AzureError::AttestationKey(err.to_string()))?;
        if key.size() < 256 {
            return Err(AzureError::AttestationKey(format!(
                "{} bits is shorter than 2048",
                key.n().bits()
            )));
        }
        Ok(AttestationKey { key })
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        use rsa::traits::PublicKeyParts;
        self.key.n().bits()
    }

    /// SHA-256 of the big-endian modulus: a short name for the key.
    pub fn fingerprint(&self) -> [u8; 32] {
        use rsa::traits::PublicKeyParts;
        Sha256::digest(self.key.n().to_bytes_be()).into()
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier;
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(self.key.clone());
        rsa::pkcs1v15::Signature::try_from(signature)
            .is_ok_and(|sig| verifier.verify(message, &sig).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcl(claims: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(HCL_MAGIC);
        for v in [1u32, 0, 2, 0] {
            b.extend(v.to_le_bytes());
        }
        b.extend([0u8; 12]);
        let mut report = [0u8; REPORT_LEN];
        report[0] = 3;
        let digest = Sha256::digest(claims);
        report[0x50..0x70].copy_from_slice(&digest);
        b.extend(report);
        let len = claims.len() as u32;
        for v in [len + 20, 1, REPORT_TYPE_SNP, 1, len] {
            b.extend(v.to_le_bytes());
        }
        b.extend(claims);
        b.extend([0u8; 16]);
        b
    }

    const CLAIMS: &[u8] =
        br#"{"keys":[{"kid":"HCLAkPub","kty":"RSA","e":"AQAB","n":"x"}],"user-data":"00"}"#;

    #[test]
    fn parses_the_layout_and_hashes_exactly_the_claims() {
        let bytes = hcl(CLAIMS);
        let h = HclReport::from_bytes(&bytes).expect("parses");
        assert_eq!(h.runtime_claims_bytes(), CLAIMS);
        assert_eq!(h.claims_hash(), ClaimsHash::Sha256);
        assert_eq!(
            h.snp_report().expect("v3").report_data(),
            h.expected_report_data()
        );
        assert_eq!(h.runtime_claims().expect("json").user_data(), Some("00"));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = hcl(CLAIMS);
        let end = RUNTIME_CLAIMS_OFFSET + CLAIMS.len();
        for n in 0..end {
            assert!(
                HclReport::from_bytes(&bytes[..n]).is_err(),
                "truncated at {n}"
            );
        }
        assert!(HclReport::from_bytes(&bytes[..end]).is_ok());
    }

    #[test]
    fn rejects_a_wrong_magic_type_hash_and_claims_size() {
        let mut b = hcl(CLAIMS);
        b[0] = b'X';
        assert!(matches!(
            HclReport::from_bytes(&b),
            Err(AzureError::Magic { .. })
        ));
        let mut b = hcl(CLAIMS);
        b[IGVM_HEADER_OFFSET + 8] = 4; // TDX
        assert!(matches!(
            HclReport::from_bytes(&b),
            Err(AzureError::HclReportType { found: 4 })
        ));
        let mut b = hcl(CLAIMS);
        b[IGVM_HEADER_OFFSET + 12] = 9;
        assert!(matches!(
            HclReport::from_bytes(&b),
            Err(AzureError::ClaimsHashType { found: 9 })
        ));
        let mut b = hcl(CLAIMS);
        b[IGVM_HEADER_OFFSET + 16..IGVM_HEADER_OFFSET + 20]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HclReport::from_bytes(&b).is_err());
        assert!(HclReport::from_bytes(&vec![0; MAX_HCL_REPORT_LEN + 1]).is_err());
    }

    #[test]
    fn the_attestation_key_must_be_one_valid_rsa_key() {
        let none = RuntimeClaims::from_json(br#"{"keys":[]}"#).expect("json");
        assert!(none.attestation_key().is_err());
        let two = RuntimeClaims::from_json(
            br#"{"keys":[{"kid":"HCLAkPub","kty":"RSA"},{"kid":"HCLAkPub","kty":"RSA"}]}"#,
        )
        .expect("json");
        assert!(two
            .attestation_key()
            .expect_err("two")
            .to_string()
            .contains("more than one"));
        let ec =
            RuntimeClaims::from_json(br#"{"keys":[{"kid":"HCLAkPub","kty":"EC"}]}"#).expect("json");
        assert!(ec.attestation_key().is_err());
        // A 1-byte modulus is no key.
        let short = RuntimeClaims::from_json(CLAIMS).expect("json");
        assert!(short.attestation_key().is_err());
        assert!(RuntimeClaims::from_json(b"[1]").is_err());
    }
}

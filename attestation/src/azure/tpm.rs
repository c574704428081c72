//! TPM 2.0 structures of a quote, read from their big-endian bytes (TPM 2.0 Library,
//! Part 2: Structures): `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE` with its
//! `TPMS_QUOTE_INFO`, and `TPMT_SIGNATURE`.
//!
//! Every read is bounds-checked: truncated, oversized or trailing input is an
//! [`AzureError`], never a panic. The raw bytes are kept, so the signature is checked
//! over exactly what the TPM signed.

use sha2::{Digest, Sha256};

use super::AzureError;

/// `TPM_GENERATED_VALUE`: the magic that opens every `TPMS_ATTEST` the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`: the structure tag of a quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_RSASSA` (RSASSA-PKCS1-v1_5).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// The PCRs of a TPM 2.0 PC-client bank.
pub const PCR_COUNT: usize = 24;
/// Longest `extraData` (`TPM2B_DATA`: at most `sizeof(TPMT_HA)`, a SHA-512 digest).
pub const MAX_EXTRA_DATA: usize = 64;
/// Longest `TPM2B_NAME` (an algorithm id and a SHA-512 digest).
const MAX_NAME: usize = 2 + 64;
/// Longest `TPM2B_DIGEST`.
const MAX_DIGEST: usize = 64;
/// Most `TPMS_PCR_SELECTION`s in a `TPML_PCR_SELECTION` (`HASH_COUNT` of any TPM).
const MAX_SELECTIONS: usize = 16;
/// Longest `pcrSelect` bitmap (`PCR_SELECT_MAX` for up to 32 PCRs).
const MAX_SELECT: usize = 4;
/// Longest RSA signature accepted (4096-bit keys).
const MAX_SIGNATURE: usize = 512;

/// A big-endian reader over a TPM structure: every read checks its bounds.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], AzureError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(AzureError::Truncated {
                what: self.what,
                offset: self.pos,
                need: n,
                len: self.bytes.len(),
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AzureError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, AzureError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, AzureError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, AzureError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, AzureError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], AzureError> {
        let size = usize::from(self.u16()?);
        if size > max {
            return Err(AzureError::TooLong {
                what: field,
                len: size,
                max,
            });
        }
        self.take(size)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The whole input must have been read.
    pub(crate) fn finish(&self) -> Result<(), AzureError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(AzureError::TrailingBytes {
                what: self.what,
                extra,
            }),
        }
    }
}

/// `TPMS_CLOCK_INFO`: the TPM's clock when it signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its clock was last reset.
    pub clock: u64,
    /// TPM resets (reboots) since the clock was set.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` has not gone backwards since it was last reported.
    pub safe: bool,
}

/// `TPMS_PCR_SELECTION`: one bank and a bitmap of its PCRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash algorithm (`TPM_ALG_ID`).
    pub hash: u16,
    /// The bitmap: bit `j` of byte `i` selects PCR `8i + j`.
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// The selected PCR indices, lowest first (the order the TPM digests them in).
    pub fn indices(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, byte) in self.select.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    out.push(8 * i + bit);
                }
            }
        }
        out
    }
}

/// A TPM 2.0 quote: a `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`, kept as raw bytes.
///
/// ```text
/// magic u32 (0xff544347) ‖ type u16 (0x8018) ‖ qualifiedSigner TPM2B_NAME
/// ‖ extraData TPM2B_DATA ‖ clockInfo (u64 ‖ u32 ‖ u32 ‖ u8) ‖ firmwareVersion u64
/// ‖ TPMS_QUOTE_INFO { pcrSelect TPML_PCR_SELECTION (u32 count ‖ {u16 hash ‖ u8 n ‖ n bytes}*),
///                     pcrDigest TPM2B_DIGEST }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    raw: Vec<u8>,
    qualified_signer: Vec<u8>,
    extra_data: Vec<u8>,
    clock_info: ClockInfo,
    firmware_version: u64,
    pcr_select: Vec<PcrSelection>,
    pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a `TPMS_ATTEST` quote from the bytes the TPM signed.
    ///
    /// # Errors
    /// [`AzureError`] for a wrong magic or type, a truncation, an oversized field or
    /// trailing bytes. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AzureError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32()?;
        if magic != TPM_GENERATED_VALUE {
            return Err(AzureError::Magic {
                what: "TPMS_ATTEST",
                found: magic,
            });
        }
        let kind = r.u16()?;
        if kind != TPM_ST_ATTEST_QUOTE {
            return Err(AzureError::AttestType { found: kind });
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_EXTRA_DATA)?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: r.u8()? != 0,
        };
        let firmware_version = r.u64()?;
        let count = r.u32()?;
        if count as usize > MAX_SELECTIONS {
            return Err(AzureError::TooLong {
                what: "pcrSelect.count",
                len: count as usize,
                max: MAX_SELECTIONS,
            });
        }
        let mut pcr_select = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash = r.u16()?;
            let size = usize::from(r.u8()?);
            if size > MAX_SELECT {
                return Err(AzureError::TooLong {
                    what: "sizeofSelect",
                    len: size,
                    max: MAX_SELECT,
                });
            }
            pcr_select.push(PcrSelection {
                hash,
                select: r.take(size)?.to_vec(),
            });
        }
        let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(Quote {
            raw: bytes.to_vec(),
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }

    /// The raw bytes: what the attestation key signed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// `qualifiedSigner`: the TPM name of the signing key's hierarchy.
    pub fn qualified_signer(&self) -> &[u8] {
        &self.qualified_signer
    }
    /// `extraData`: the qualifying data the caller of TPM2_Quote passed (the nonce).
    pub fn extra_data(&self) -> &[u8] {
        &self.extra_data
    }
    /// `clockInfo`.
    pub fn clock_info(&self) -> ClockInfo {
        self.clock_info
    }
    /// `firmwareVersion`: the TPM vendor's firmware version.
    pub fn firmware_version(&self) -> u64 {
        self.firmware_version
    }
    /// `TPMS_QUOTE_INFO.pcrSelect`.
    pub fn pcr_select(&self) -> &[PcrSelection] {
        &self.pcr_select
    }
    /// `TPMS_QUOTE_INFO.pcrDigest`.
    pub fn pcr_digest(&self) -> &[u8] {
        &self.pcr_digest
    }

    /// The quoted PCR indices of the SHA-256 bank, in the order the TPM digests them.
    ///
    /// # Errors
    /// [`AzureError::PcrBank`] if the quote selects PCRs of another bank (their values
    /// are not in the evidence), [`AzureError::PcrIndex`] for an index beyond 23.
    pub fn sha256_pcrs(&self) -> Result<Vec<usize>, AzureError> {
        let mut out = Vec::new();
        for sel in &self.pcr_select {
            let indices = sel.indices();
            if indices.is_empty() {
                continue;
            }
            if sel.hash != TPM_ALG_SHA256 {
                return Err(AzureError::PcrBank { found: sel.hash });
            }
            if let Some(&index) = indices.iter().find(|&&i| i >= PCR_COUNT) {
                return Err(AzureError::PcrIndex { index });
            }
            out.extend(indices);
        }
        Ok(out)
    }

    /// SHA-256 over the values of the quoted PCRs (`pcrs[i]` is PCR `i` of the SHA-256
    /// bank), concatenated in selection order: what `pcrDigest` must be.
    ///
    /// # Errors
    /// As [`Quote::sha256_pcrs`], or [`AzureError::PcrMissing`] if `pcrs` lacks a quoted PCR.
    pub fn digest_of(&self, pcrs: &[[u8; 32]]) -> Result<[u8; 32], AzureError> {
        let mut h = Sha256::new();
        for index in self.sha256_pcrs()? {
            let value = pcrs.get(index).ok_or(AzureError::PcrMissing { index })?;
            h.update(value);
        }
        Ok(h.finalize().into())
    }
}

/// `TPMT_SIGNATURE` as TPM2_Quote returns it: the scheme, its hash, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSignature {
    /// `sigAlg` (`TPM_ALG_RSASSA` for Azure's attestation key).
    pub sig_alg: u16,
    /// The scheme's hash (`TPM_ALG_SHA256`).
    pub hash: u16,
    /// The signature bytes (`TPM2B_PUBLIC_KEY_RSA`), big-endian.
    pub signature: Vec<u8>,
}

impl TpmSignature {
    /// Parses an RSASSA or RSAPSS `TPMT_SIGNATURE` from the start of `bytes`, returning it
    /// and the number of bytes it took.
    ///
    /// # Errors
    /// [`AzureError`] for a truncation, another scheme, or an oversized signature.
    pub fn from_prefix(bytes: &[u8]) -> Result<(Self, usize), AzureError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let sig_alg = r.u16()?;
        if sig_alg != TPM_ALG_RSASSA {
            return Err(AzureError::SignatureScheme { found: sig_alg });
        }
        let hash = r.u16()?;
        let signature = r.tpm2b("signature", MAX_SIGNATURE)?.to_vec();
        let used = bytes.len() - r.remaining();
        Ok((
            TpmSignature {
                sig_alg,
                hash,
                signature,
            },
            used,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quote like Azure's: 9-byte nonce, 24 SHA-256 PCRs.
    fn quote_bytes(extra: &[u8], pcrs: &[[u8; 32]; 24]) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend(TPM_GENERATED_VALUE.to_be_bytes());
        q.extend(TPM_ST_ATTEST_QUOTE.to_be_bytes());
        q.extend(34u16.to_be_bytes());
        q.extend(TPM_ALG_SHA256.to_be_bytes());
        q.extend([7u8; 32]);
        q.extend((extra.len() as u16).to_be_bytes());
        q.extend(extra);
        q.extend(0x1b6f9cu64.to_be_bytes());
        q.extend(2u32.to_be_bytes());
        q.extend(0u32.to_be_bytes());
        q.push(1);
        q.extend(0x2020_0312_0012_0003u64.to_be_bytes());
        q.extend(1u32.to_be_bytes());
        q.extend(TPM_ALG_SHA256.to_be_bytes());
        q.push(3);
        q.extend([0xff, 0xff, 0xff]);
        let mut h = Sha256::new();
        for p in pcrs {
            h.update(p);
        }
        q.extend(32u16.to_be_bytes());
        q.extend(h.finalize());
        q
    }

    fn pcrs() -> [[u8; 32]; 24] {
        let mut out = [[0u8; 32]; 24];
        for (i, p) in out.iter_mut().enumerate() {
            p[0] = i as u8;
        }
        out
    }

    #[test]
    fn parses_a_quote_and_recomputes_its_pcr_digest() {
        let bytes = quote_bytes(b"challenge", &pcrs());
        let q = Quote::from_bytes(&bytes).expect("parses");
        assert_eq!(q.extra_data(), b"challenge");
        assert_eq!(q.clock_info().reset_count, 2);
        assert!(q.clock_info().safe);
        assert_eq!(
            q.sha256_pcrs().expect("sha256"),
            (0..24).collect::<Vec<_>>()
        );
        assert_eq!(q.digest_of(&pcrs()).expect("digest")[..], *q.pcr_digest());
        assert_eq!(q.as_bytes(), &bytes[..]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = quote_bytes(b"challenge", &pcrs());
        for n in 0..bytes.len() {
            assert!(Quote::from_bytes(&bytes[..n]).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn rejects_trailing_bytes_wrong_magic_and_type() {
        let mut bytes = quote_bytes(b"n", &pcrs());
        bytes.push(0);
        assert!(matches!(
            Quote::from_bytes(&bytes),
            Err(AzureError::TrailingBytes { extra: 1, .. })
        ));
        let mut bytes = quote_bytes(b"n", &pcrs());
        bytes[0] ^= 1;
        assert!(matches!(
            Quote::from_bytes(&bytes),
            Err(AzureError::Magic { .. })
        ));
        let mut bytes = quote_bytes(b"n", &pcrs());
        bytes[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert!(matches!(
            Quote::from_bytes(&bytes),
            Err(AzureError::AttestType { found: 0x8017 })
        ));
    }

    #[test]
    fn rejects_oversized_fields() {
        let bytes = quote_bytes(&[1; 65], &pcrs());
        assert!(matches!(
            Quote::from_bytes(&bytes),
            Err(AzureError::TooLong {
                what: "extraData",
                ..
            })
        ));
    }

    #[test]
    fn a_digest_needs_every_quoted_pcr_of_the_sha256_bank() {
        let bytes = quote_bytes(b"n", &pcrs());
        let q = Quote::from_bytes(&bytes).expect("parses");
        assert!(matches!(
            q.digest_of(&pcrs()[..23]),
            Err(AzureError::PcrMissing { index: 23 })
        ));
        let mut sha1 = bytes.clone();
        // The selection's hash: magic 4, type 2, name 2+34, extra 2+1, clock 17, fw 8, count 4.
        let at = 4 + 2 + 36 + 3 + 17 + 8 + 4;
        sha1[at..at + 2].copy_from_slice(&4u16.to_be_bytes());
        let q = Quote::from_bytes(&sha1).expect("parses");
        assert!(matches!(
            q.sha256_pcrs(),
            Err(AzureError::PcrBank { found: 4 })
        ));
    }

    #[test]
    fn pcr_selection_indices_are_lowest_first() {
        let sel = PcrSelection {
            hash: TPM_ALG_SHA256,
            select: vec![0b1000_0001, 0, 0b0000_0010],
        };
        assert_eq!(sel.indices(), vec![0, 7, 17]);
    }

    #[test]
    fn parses_a_tpmt_signature_and_refuses_truncations() {
        let mut bytes = Vec::new();
        bytes.extend(TPM_ALG_RSASSA.to_be_bytes());
        bytes.extend(TPM_ALG_SHA256.to_be_bytes());
        bytes.extend(4u16.to_be_bytes());
        bytes.extend([1, 2, 3, 4]);
        bytes.extend([9, 9]);
        let (sig, used) = TpmSignature::from_prefix(&bytes).expect("parses");
        assert_eq!(sig.signature, vec![1, 2, 3, 4]);
        assert_eq!(used, 10);
        for n in 0..10 {
            assert!(TpmSignature::from_prefix(&bytes[..n]).is_err(), "{n}");
        }
        bytes[1] = 0x16; // RSAPSS
        assert!(matches!(
            TpmSignature::from_prefix(&bytes),
            Err(AzureError::SignatureScheme { found: 0x16 })
        ));
    }
}

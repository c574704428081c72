//! The Azure CVM attester: the HCL report from vTPM NV index `0x01400001` and a TPM2 quote
//! by the attestation key at persistent handle `0x81000003` over PCRs 0–23 (SHA-256), with
//! `extraData = SHA-256(REPORT_DATA)` ([`super::extra_data_for`]).
//!
//! It speaks raw TPM 2.0 commands (TPM 2.0 Library, Part 3) over the small [`Tpm`]
//! trait: [`TpmDevice`] writes a command buffer to `/dev/tpmrm0` and reads the response;
//! tests answer with recorded bytes. Commands used: `TPM2_NV_ReadPublic` (the HCL
//! report's size), `TPM2_NV_Read` in chunks (owner authorization, empty password),
//! `TPM2_Quote` (empty password for the AK) and `TPM2_PCR_Read` (8 PCRs per call).
//! What only an Azure CVM can confirm is listed in `docs/snp-attester.md`.

use std::io;
use std::path::PathBuf;

use super::hcl::HclReport;
use super::tpm::{Quote, Reader, TpmSignature, PCR_COUNT, TPM_ALG_SHA256};
use super::AzureError;
use crate::attester::{AttestError, Attester};
use crate::evidence::{Evidence, TeeKind, VtpmEvidence};

/// The vTPM NV index holding the HCL report.
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// The persistent handle of Azure's vTPM attestation key.
pub const AK_HANDLE: u32 = 0x8100_0003;
/// The default TPM device (the kernel's resource manager).
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// Bytes asked for per `TPM2_NV_Read` (at most `TPM_PT_NV_BUFFER_MAX`, 1024 on common TPMs).
pub const NV_CHUNK: u16 = 1024;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_CC_NV_READ: u32 = 0x0000_014E;
const TPM_CC_QUOTE: u32 = 0x0000_0158;
const TPM_CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
const TPM_CC_PCR_READ: u32 = 0x0000_017E;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ALG_NULL: u16 = 0x0010;
/// Largest response accepted from the TPM (`TPM_PT_MAX_RESPONSE_SIZE` is 4096 on most).
const MAX_RESPONSE: usize = 8192;
/// Attempts at a quote whose PCRs did not change while they were read.
const QUOTE_ATTEMPTS: usize = 3;

/// A TPM 2.0 device: one command buffer in, its response buffer out.
pub trait Tpm: Send + Sync {
    /// Sends a marshalled command and returns the marshalled response.
    ///
    /// # Errors
    /// The OS error of the device.
    fn transact(&self, command: &[u8]) -> io::Result<Vec<u8>>;
}

impl<T: Tpm + ?Sized> Tpm for &T {
    fn transact(&self, command: &[u8]) -> io::Result<Vec<u8>> {
        (**self).transact(command)
    }
}

/// The real TPM: a character device such as `/dev/tpmrm0`, one write of the command and
/// one read of the response per transaction.
#[derive(Debug, Clone)]
pub struct TpmDevice {
    path: PathBuf,
}

impl TpmDevice {
    /// The TPM at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TpmDevice { path: path.into() }
    }

    /// The kernel's resource-managed TPM, [`TPM_DEVICE`].
    pub fn system() -> Self {
        Self::new(TPM_DEVICE)
    }
}

impl Tpm for TpmDevice {
    fn transact(&self, command: &[u8]) -> io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        dev.write_all(command)?;
        let mut buf = vec![0u8; MAX_RESPONSE];
        let n = dev.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Why the Azure attester failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureAttestError {
    /// The TPM device failed.
    #[error("TPM {command}: {source}")]
    Device {
        /// The command.
        command: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The TPM answered with an error code.
    #[error("TPM {command}: response code {code:#x}")]
    Tpm {
        /// The command.
        command: &'static str,
        /// `responseCode`.
        code: u32,
    },
    /// The response does not parse.
    #[error("TPM {command}: malformed response: {source}")]
    Response {
        /// The command.
        command: &'static str,
        /// What is wrong.
        source: AzureError,
    },
    /// The PCRs kept changing between the quote and their reading.
    #[error("the PCRs changed during each of {QUOTE_ATTEMPTS} quotes")]
    PcrsChanged,
}

impl From<AzureAttestError> for AttestError {
    fn from(e: AzureAttestError) -> Self {
        AttestError::Device(e.to_string())
    }
}

/// A command buffer: the header's size is filled in by [`Command::finish`].
struct Command(Vec<u8>);

impl Command {
    fn new(tag: u16, code: u32) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend(tag.to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend(code.to_be_bytes());
        Command(b)
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn tpm2b(self, bytes: &[u8]) -> Self {
        let len = u16::try_from(bytes.len()).expect("command fields are short");
        let mut c = self.u16(len);
        c.0.extend(bytes);
        c
    }
    /// The empty-password session (`TPM_RS_PW`), as the authorization area.
    fn password_session(self) -> Self {
        self.u32(9).u32(TPM_RS_PW).u16(0).u8(0).u16(0)
    }
    /// `TPML_PCR_SELECTION` with one SHA-256 selection.
    fn sha256_selection(self, select: [u8; 3]) -> Self {
        self.u32(1)
            .u16(TPM_ALG_SHA256)
            .u8(3)
            .u8(select[0])
            .u8(select[1])
            .u8(select[2])
    }
    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("commands are short");
        self.0[2..6].copy_from_slice(&len.to_be_bytes());
        self.0
    }
}

/// The Azure CVM attester, over a [`Tpm`].
#[derive(Debug)]
pub struct AzureAttester<T: Tpm> {
    tpm: T,
}

impl AzureAttester<TpmDevice> {
    /// The attester on `/dev/tpmrm0`.
    pub fn system() -> Self {
        AzureAttester::new(TpmDevice::system())
    }
}

impl<T: Tpm> AzureAttester<T> {
    /// An attester over `tpm`.
    pub fn new(tpm: T) -> Self {
        AzureAttester { tpm }
    }

    /// Sends `command`; returns the response's bytes after its 10-byte header.
    fn call(&self, name: &'static str, command: Vec<u8>) -> Result<Vec<u8>, AzureAttestError> {
        let response = self
            .tpm
            .transact(&command)
            .map_err(|source| AzureAttestError::Device {
                command: name,
                source,
            })?;
        let malformed = |source| AzureAttestError::Response {
            command: name,
            source,
        };
        let mut r = Reader::new(&response, "TPM response");
        let _tag = r.u16().map_err(malformed)?;
        let size = r.u32().map_err(malformed)? as usize;
        let code = r.u32().map_err(malformed)?;
        if size != response.len() {
            return Err(malformed(AzureError::TooLong {
                what: "responseSize",
                len: size,
                max: response.len(),
            }));
        }
        if code != 0 {
            return Err(AzureAttestError::Tpm {
                command: name,
                code,
            });
        }
        Ok(response[10..].to_vec())
    }

    /// The size of NV index `index` (`TPM2_NV_ReadPublic`).
    fn nv_size(&self, index: u32) -> Result<u16, AzureAttestError> {
        const NAME: &str = "TPM2_NV_ReadPublic";
        let body = self.call(
            NAME,
            Command::new(TPM_ST_NO_SESSIONS, TPM_CC_NV_READ_PUBLIC)
                .u32(index)
                .finish(),
        )?;
        let parse = || -> Result<u16, AzureError> {
            let mut r = Reader::new(&body, "TPM2B_NV_PUBLIC");
            let public = r.tpm2b("nvPublic", 1024)?;
            let mut p = Reader::new(public, "TPMS_NV_PUBLIC");
            let _index = p.u32()?;
            let _name_alg = p.u16()?;
            let _attributes = p.u32()?;
            let _policy = p.tpm2b("authPolicy", 64)?;
            let size = p.u16()?;
            p.finish()?;
            Ok(size)
        };
        parse().map_err(|source| AzureAttestError::Response {
            command: NAME,
            source,
        })
    }

    /// The whole NV index `index`, read in chunks of [`NV_CHUNK`] (`TPM2_NV_Read`).
    fn nv_read(&self, index: u32) -> Result<Vec<u8>, AzureAttestError> {
        const NAME: &str = "TPM2_NV_Read";
        let size = self.nv_size(index)?;
        let mut out = Vec::with_capacity(usize::from(size));
        while out.len() < usize::from(size) {
            let offset = u16::try_from(out.len()).expect("below a u16 size");
            let want = NV_CHUNK.min(size - offset);
            let body = self.call(
                NAME,
                Command::new(TPM_ST_SESSIONS, TPM_CC_NV_READ)
                    .u32(TPM_RH_OWNER)
                    .u32(index)
                    .password_session()
                    .u16(want)
                    .u16(offset)
                    .finish(),
            )?;
            let parse = || -> Result<Vec<u8>, AzureError> {
                let mut r = Reader::new(&body, "TPM2_NV_Read response");
                let _parameter_size = r.u32()?;
                Ok(r.tpm2b("data", usize::from(want))?.to_vec())
            };
            let chunk = parse().map_err(|source| AzureAttestError::Response {
                command: NAME,
                source,
            })?;
            if chunk.is_empty() {
                return Err(AzureAttestError::Response {
                    command: NAME,
                    source: AzureError::Truncated {
                        what: "NV data",
                        offset: out.len(),
                        need: usize::from(want),
                        len: 0,
                    },
                });
            }
            out.extend(chunk);
        }
        Ok(out)
    }

    /// The HCL report (NV index [`HCL_REPORT_NV_INDEX`]), parsed once to check it is one.
    ///
    /// # Errors
    /// [`AzureAttestError`] naming the command that failed.
    pub fn hcl_report(&self) -> Result<Vec<u8>, AzureAttestError> {
        let bytes = self.nv_read(HCL_REPORT_NV_INDEX)?;
        HclReport::from_bytes(&bytes).map_err(|source| AzureAttestError::Response {
            command: "TPM2_NV_Read",
            source,
        })?;
        Ok(bytes)
    }

    /// A quote by the AK over PCRs 0–23 (SHA-256) with `extra_data` (`TPM2_Quote`): the
    /// `TPMS_ATTEST` bytes and the RSASSA signature's bytes.
    ///
    /// # Errors
    /// [`AzureAttestError`] naming the command that failed.
    pub fn quote(&self, extra_data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), AzureAttestError> {
        const NAME: &str = "TPM2_Quote";
        let body = self.call(
            NAME,
            Command::new(TPM_ST_SESSIONS, TPM_CC_QUOTE)
                .u32(AK_HANDLE)
                .password_session()
                .tpm2b(extra_data)
                .u16(TPM_ALG_NULL)
                .sha256_selection([0xff, 0xff, 0xff])
                .finish(),
        )?;
        let parse = || -> Result<(Vec<u8>, Vec<u8>), AzureError> {
            let mut r = Reader::new(&body, "TPM2_Quote response");
            let parameter_size = r.u32()? as usize;
            let params = r.take(parameter_size)?;
            let mut p = Reader::new(params, "TPM2_Quote parameters");
            let attest = p.tpm2b("quoted", 2048)?.to_vec();
            let rest = p.take(p.remaining())?;
            let (sig, used) = TpmSignature::from_prefix(rest)?;
            if used != rest.len() {
                return Err(AzureError::TrailingBytes {
                    what: "TPM2_Quote parameters",
                    extra: rest.len() - used,
                });
            }
            if sig.hash != TPM_ALG_SHA256 {
                return Err(AzureError::SignatureScheme { found: sig.hash });
            }
            Quote::from_bytes(&attest)?;
            Ok((attest, sig.signature))
        };
        parse().map_err(|source| AzureAttestError::Response {
            command: NAME,
            source,
        })
    }

    /// PCRs 0–23 of the SHA-256 bank (`TPM2_PCR_Read`, 8 per call).
    ///
    /// # Errors
    /// [`AzureAttestError`] naming the command that failed.
    pub fn pcrs(&self) -> Result<Vec<[u8; 32]>, AzureAttestError> {
        const NAME: &str = "TPM2_PCR_Read";
        let mut out = Vec::with_capacity(PCR_COUNT);
        for byte in 0..3 {
            let mut select = [0u8; 3];
            select[byte] = 0xff;
            let body = self.call(
                NAME,
                Command::new(TPM_ST_NO_SESSIONS, TPM_CC_PCR_READ)
                    .sha256_selection(select)
                    .finish(),
            )?;
            let parse = || -> Result<Vec<[u8; 32]>, AzureError> {
                let mut r = Reader::new(&body, "TPM2_PCR_Read response");
                let _update_counter = r.u32()?;
                // The selection read must be the one asked for.
                let count = r.u32()?;
                let hash = r.u16()?;
                let size = r.u8()?;
                let got = r.take(usize::from(size))?;
                if count != 1 || hash != TPM_ALG_SHA256 || got != select {
                    return Err(AzureError::PcrBank { found: hash });
                }
                let digests = r.u32()?;
                if digests != 8 {
                    return Err(AzureError::PcrMissing {
                        index: 8 * byte + digests.min(8) as usize,
                    });
                }
                let mut values = Vec::with_capacity(8);
                for _ in 0..8 {
                    let d = r.tpm2b("digest", 32)?;
                    let v: [u8; 32] = d.try_into().map_err(|_| AzureError::TooLong {
                        what: "PCR digest",
                        len: d.len(),
                        max: 32,
                    })?;
                    values.push(v);
                }
                r.finish()?;
                Ok(values)
            };
            out.extend(parse().map_err(|source| AzureAttestError::Response {
                command: NAME,
                source,
            })?);
        }
        Ok(out)
    }

    /// The vTPM part of the evidence for `extra_data`: the HCL report, a quote, and PCRs
    /// whose digest is the quote's (quoted again if they changed in between).
    ///
    /// # Errors
    /// [`AzureAttestError`] naming the command that failed, or
    /// [`AzureAttestError::PcrsChanged`].
    pub fn vtpm_evidence(&self, extra_data: &[u8]) -> Result<VtpmEvidence, AzureAttestError> {
        let hcl_report = self.hcl_report()?;
        for _ in 0..QUOTE_ATTEMPTS {
            let (quote, signature) = self.quote(extra_data)?;
            let pcrs = self.pcrs()?;
            let parsed =
                Quote::from_bytes(&quote).map_err(|source| AzureAttestError::Response {
                    command: "TPM2_Quote",
                    source,
                })?;
            if parsed
                .digest_of(&pcrs)
                .is_ok_and(|d| d[..] == *parsed.pcr_digest())
            {
                return Ok(VtpmEvidence {
                    hcl_report,
                    quote,
                    signature,
                    pcrs,
                });
            }
        }
        Err(AzureAttestError::PcrsChanged)
    }
}

impl<T: Tpm> Attester for AzureAttester<T> {
    fn tee(&self) -> TeeKind {
        TeeKind::AzSnpVtpm
    }

    fn interface(&self) -> String {
        "vtpm".into()
    }

    /// Evidence whose quote carries `extraData = SHA-256(report_data)`. The certificates
    /// are left empty: the verifier completes the chain (KDS), as for SNP without a table.
    fn report(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        let vtpm = self.vtpm_evidence(&super::extra_data_for(&report_data))?;
        let hcl = HclReport::from_bytes(&vtpm.hcl_report).map_err(|e| {
            AttestError::Device(format!("the HCL report read back does not parse: {e}"))
        })?;
        Ok(Evidence {
            tee: TeeKind::AzSnpVtpm,
            report: hcl.snp_report_bytes().to_vec(),
            certificates: Vec::new(),
            binding: None,
            vtpm: Some(vtpm),
        })
    }
}

//! The SEV-SNP `ATTESTATION_REPORT` (SNP ABI spec 56860, Table 23), kept as raw bytes.
//!
//! [`Report::from_bytes`] checks only the length and the version; every field is read
//! from the raw 1184 bytes at its fixed offset, so the signature is always checked over
//! the bytes the platform signed (`0x000..0x2A0`), never over a re-encoding.

use std::fmt;

use serde::Serialize;

/// Length of an attestation report (SNP ABI: 0x4A0 bytes).
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part of the report: bytes `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;
/// Report versions this crate understands.
pub const KNOWN_VERSIONS: [u32; 3] = [2, 3, 5];

/// Why bytes are not an attestation report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The input does not have the report's fixed length.
    #[error("an attestation report is {REPORT_LEN} bytes, got {found}")]
    Length {
        /// Bytes received.
        found: usize,
    },
    /// A report version this crate does not know how to read.
    #[error("report version {found} is not supported (known: 2, 3, 5)")]
    UnsupportedVersion {
        /// Version in the report.
        found: u32,
    },
    /// Neither raw bytes nor hex text.
    #[error("report is neither {REPORT_LEN} raw bytes nor hex text of them")]
    Encoding,
}

/// An SEV-SNP attestation report: the raw bytes, read at fixed offsets.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_LEN]>,
}

/// The AMD product generation, which fixes the TCB layout and the root of trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// 3rd generation EPYC.
    Milan,
    /// 4th generation EPYC.
    Genoa,
    /// 5th generation EPYC.
    Turin,
    /// Veil's software mock of the secure processor (Milan/Genoa TCB layout).
    Mock,
}

impl Product {
    /// The product name AMD uses in certificate names (`ARK-Milan`, `SEV-Milan`).
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
            Product::Mock => "Mock",
        }
    }

    /// Parses a product name in any case, ignoring a stepping suffix (`Milan-B0`).
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or(name).to_ascii_lowercase();
        match base.as_str() {
            "milan" => Some(Product::Milan),
            "genoa" => Some(Product::Genoa),
            "turin" => Some(Product::Turin),
            "mock" => Some(Product::Mock),
            _ => None,
        }
    }

    /// The product that a CPUID family and model belong to (report v3+, bytes 0x188/0x189).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Product::Mock => f.write_str("MOCK"),
            other => f.write_str(other.name()),
        }
    }
}

/// A TCB version: the security version numbers of the platform's components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct Tcb {
    /// FMC firmware SVN (Turin and later only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes a raw TCB_VERSION in the layout of `product`.
    ///
    /// Milan/Genoa: `[bl, tee, 0, 0, 0, 0, snp, ucode]`; Turin: `[fmc, bl, tee, snp, 0, 0, 0, ucode]`.
    pub fn from_raw(raw: u64, product: Product) -> Self {
        let b = raw.to_le_bytes();
        match product {
            Product::Turin => Tcb {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
            _ => Tcb {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
        }
    }

    /// Encodes this TCB in the raw layout of `product`.
    pub fn to_raw(self, product: Product) -> u64 {
        let mut b = [0u8; 8];
        match product {
            Product::Turin => {
                b[0] = self.fmc.unwrap_or(0);
                b[1] = self.bootloader;
                b[2] = self.tee;
                b[3] = self.snp;
            }
            _ => {
                b[0] = self.bootloader;
                b[1] = self.tee;
                b[6] = self.snp;
            }
        }
        b[7] = self.microcode;
        u64::from_le_bytes(b)
    }

    /// Names of the components of `self` that are below those of `minimum`.
    pub fn components_below(&self, minimum: &Tcb) -> Vec<&'static str> {
        let mut below = Vec::new();
        if self.fmc.unwrap_or(0) < minimum.fmc.unwrap_or(0) {
            below.push("fmc");
        }
        for (name, found, min) in [
            ("bootloader", self.bootloader, minimum.bootloader),
            ("tee", self.tee, minimum.tee),
            ("snp", self.snp, minimum.snp),
            ("microcode", self.microcode, minimum.microcode),
        ] {
            if found < min {
                below.push(name);
            }
        }
        below
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Which key signed the report (KEY_INFO.SIGNING_KEY, bits 4:2 at 0x48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned chip endorsement key: per chip and TCB.
    Vcek,
    /// Versioned loaded endorsement key: per cloud provider.
    Vlek,
    /// No key: the report is unsigned.
    None,
    /// A reserved value.
    Reserved(u8),
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Vcek => f.write_str("VCEK"),
            SigningKey::Vlek => f.write_str("VLEK"),
            SigningKey::None => f.write_str("none"),
            SigningKey::Reserved(v) => write!(f, "reserved({v})"),
        }
    }
}

/// A firmware version: major.minor, build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// Guest policy bits (SNP ABI Table 9).
pub mod guest_policy {
    /// Host SMT allowed.
    pub const SMT: u64 = 1 << 16;
    /// Reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// Association with a migration agent allowed.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Debugging allowed.
    pub const DEBUG: u64 = 1 << 19;
    /// Single socket only.
    pub const SINGLE_SOCKET: u64 = 1 << 20;
    /// CXL allowed.
    pub const CXL_ALLOW: u64 = 1 << 21;
    /// AES-256-XTS required.
    pub const MEM_AES_256_XTS: u64 = 1 << 22;
    /// RAPL must be disabled.
    pub const RAPL_DIS: u64 = 1 << 23;
    /// Ciphertext hiding required.
    pub const CIPHERTEXT_HIDING: u64 = 1 << 24;
    /// Page swap disabled.
    pub const PAGE_SWAP_DISABLE: u64 = 1 << 25;
    /// Bits defined up to ABI 1.58; everything above must be zero.
    pub const KNOWN: u64 = (1 << 26) - 1;
}

macro_rules! le {
    ($raw:expr, $off:expr, $t:ty) => {{
        const N: usize = std::mem::size_of::<$t>();
        let mut b = [0u8; N];
        b.copy_from_slice(&$raw[$off..$off + N]);
        <$t>::from_le_bytes(b)
    }};
}

fn array<const N: usize>(raw: &[u8; REPORT_LEN], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[off..off + N]);
    out
}

impl Report {
    /// Parses a report from its raw 1184 bytes.
    ///
    /// # Errors
    /// [`ReportError::Length`] or [`ReportError::UnsupportedVersion`]. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReportError> {
        let raw: [u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| ReportError::Length { found: bytes.len() })?;
        let report = Report { raw: Box::new(raw) };
        if !KNOWN_VERSIONS.contains(&report.version()) {
            return Err(ReportError::UnsupportedVersion {
                found: report.version(),
            });
        }
        Ok(report)
    }

    /// Parses raw bytes, hex text of them (whitespace ignored), or an Azure HCL report
    /// (magic `HCLA`, the SNP report at bytes `0x20..0x4C0`).
    ///
    /// # Errors
    /// As [`Report::from_bytes`], or [`ReportError::Encoding`].
    pub fn from_bytes_or_hex(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() == REPORT_LEN {
            return Report::from_bytes(bytes);
        }
        if bytes.len() >= 0x20 + REPORT_LEN && bytes.starts_with(b"HCLA") {
            return Report::from_bytes(&bytes[0x20..0x20 + REPORT_LEN]);
        }
        let text: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if text.len() == 2 * REPORT_LEN {
            let raw = hex::decode(&text).map_err(|_| ReportError::Encoding)?;
            return Report::from_bytes(&raw);
        }
        if text.iter().all(u8::is_ascii_hexdigit) && !text.is_empty() {
            return Err(ReportError::Length {
                found: text.len() / 2,
            });
        }
        Err(ReportError::Length { found: bytes.len() })
    }

    /// Builds a report from raw bytes without checking the version (mock attester use).
    pub(crate) fn from_raw_unchecked(raw: [u8; REPORT_LEN]) -> Self {
        Report { raw: Box::new(raw) }
    }

    /// The raw 1184 bytes.
    pub fn as_bytes(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The signed bytes `0x000..0x2A0`.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// VERSION at 0x00.
    pub fn version(&self) -> u32 {
        le!(self.raw, 0x00, u32)
    }
    /// GUEST_SVN at 0x04.
    pub fn guest_svn(&self) -> u32 {
        le!(self.raw, 0x04, u32)
    }
    /// POLICY at 0x08 (see [`guest_policy`]).
    pub fn policy(&self) -> u64 {
        le!(self.raw, 0x08, u64)
    }
    /// FAMILY_ID at 0x10.
    pub fn family_id(&self) -> [u8; 16] {
        array(&self.raw, 0x10)
    }
    /// IMAGE_ID at 0x20.
    pub fn image_id(&self) -> [u8; 16] {
        array(&self.raw, 0x20)
    }
    /// VMPL at 0x30.
    pub fn vmpl(&self) -> u32 {
        le!(self.raw, 0x30, u32)
    }
    /// SIGNATURE_ALGO at 0x34 (1 = ECDSA P-384 with SHA-384).
    pub fn signature_algo(&self) -> u32 {
        le!(self.raw, 0x34, u32)
    }
    /// CURRENT_TCB at 0x38, raw.
    pub fn current_tcb_raw(&self) -> u64 {
        le!(self.raw, 0x38, u64)
    }
    /// PLATFORM_INFO at 0x40.
    pub fn platform_info(&self) -> u64 {
        le!(self.raw, 0x40, u64)
    }
    /// KEY_INFO at 0x48 (AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 4:2).
    pub fn key_info(&self) -> u32 {
        le!(self.raw, 0x48, u32)
    }
    /// KEY_INFO.AUTHOR_KEY_EN.
    pub fn author_key_en(&self) -> bool {
        self.key_info() & 1 == 1
    }
    /// KEY_INFO.MASK_CHIP_KEY.
    pub fn mask_chip_key(&self) -> bool {
        self.key_info() & 2 == 2
    }
    /// KEY_INFO.SIGNING_KEY.
    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info() >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => SigningKey::Reserved(other as u8),
        }
    }
    /// REPORT_DATA at 0x50: the 64 bytes chosen by the guest.
    pub fn report_data(&self) -> [u8; 64] {
        array(&self.raw, 0x50)
    }
    /// MEASUREMENT at 0x90: the launch digest.
    pub fn measurement(&self) -> [u8; 48] {
        array(&self.raw, 0x90)
    }
    /// HOST_DATA at 0xC0.
    pub fn host_data(&self) -> [u8; 32] {
        array(&self.raw, 0xC0)
    }
    /// ID_KEY_DIGEST at 0xE0.
    pub fn id_key_digest(&self) -> [u8; 48] {
        array(&self.raw, 0xE0)
    }
    /// AUTHOR_KEY_DIGEST at 0x110.
    pub fn author_key_digest(&self) -> [u8; 48] {
        array(&self.raw, 0x110)
    }
    /// REPORT_ID at 0x140.
    pub fn report_id(&self) -> [u8; 32] {
        array(&self.raw, 0x140)
    }
    /// REPORT_ID_MA at 0x160.
    pub fn report_id_ma(&self) -> [u8; 32] {
        array(&self.raw, 0x160)
    }
    /// REPORTED_TCB at 0x180, raw.
    pub fn reported_tcb_raw(&self) -> u64 {
        le!(self.raw, 0x180, u64)
    }
    /// CPUID family, model, stepping at 0x188..0x18B (version 3 and later).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| (self.raw[0x188], self.raw[0x189], self.raw[0x18A]))
    }
    /// CHIP_ID at 0x1A0.
    pub fn chip_id(&self) -> [u8; 64] {
        array(&self.raw, 0x1A0)
    }
    /// COMMITTED_TCB at 0x1E0, raw.
    pub fn committed_tcb_raw(&self) -> u64 {
        le!(self.raw, 0x1E0, u64)
    }
    /// CURRENT_BUILD/MINOR/MAJOR at 0x1E8..0x1EB.
    pub fn current_version(&self) -> FirmwareVersion {
        FirmwareVersion {
            build: self.raw[0x1E8],
            minor: self.raw[0x1E9],
            major: self.raw[0x1EA],
        }
    }
    /// COMMITTED_BUILD/MINOR/MAJOR at 0x1EC..0x1EF.
    pub fn committed_version(&self) -> FirmwareVersion {
        FirmwareVersion {
            build: self.raw[0x1EC],
            minor: self.raw[0x1ED],
            major: self.raw[0x1EE],
        }
    }
    /// LAUNCH_TCB at 0x1F0, raw.
    pub fn launch_tcb_raw(&self) -> u64 {
        le!(self.raw, 0x1F0, u64)
    }
    /// LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR at 0x1F8/0x200 (version 5 and later).
    pub fn mitigation_vectors(&self) -> Option<(u64, u64)> {
        (self.version() >= 5).then(|| (le!(self.raw, 0x1F8, u64), le!(self.raw, 0x200, u64)))
    }
    /// Signature R and S, each 72 bytes little-endian, at 0x2A0 and 0x2E8.
    pub fn signature_rs(&self) -> ([u8; 72], [u8; 72]) {
        (array(&self.raw, 0x2A0), array(&self.raw, 0x2E8))
    }

    /// The product that the CPUID bytes name (report v3+), if any.
    pub fn cpuid_product(&self) -> Option<Product> {
        self.cpuid()
            .and_then(|(family, model, _)| Product::from_cpuid(family, model))
    }

    /// Reserved bytes that must be zero but are not, as `(offset, len)` ranges.
    pub fn nonzero_reserved(&self) -> Vec<(usize, usize)> {
        let mut ranges = vec![
            (0x4C, 4),
            (0x1EB, 1),
            (0x1EF, 1),
            (0x208, 0x98),
            (0x330, 0x170),
        ];
        // Reserved in v2 where v3 placed the CPUID bytes.
        if self.version() >= 3 {
            ranges.push((0x18B, 0x15));
        } else {
            ranges.push((0x188, 0x18));
        }
        if self.version() < 5 {
            ranges.push((0x1F8, 0x10));
        }
        ranges.retain(|&(off, len)| self.raw[off..off + len].iter().any(|&b| b != 0));
        ranges
    }

    /// Every field, decoded, for display (`veil report show`).
    pub fn fields(&self, product: Option<Product>) -> ReportFields {
        let layout = product
            .or_else(|| self.cpuid_product())
            .unwrap_or(Product::Milan);
        let tcb = |raw: u64| TcbField {
            raw: format!("{raw:#018x}"),
            decoded: Tcb::from_raw(raw, layout),
        };
        let policy = self.policy();
        ReportFields {
            version: self.version(),
            guest_svn: self.guest_svn(),
            policy: format!("{policy:#x}"),
            policy_abi: format!("{}.{}", (policy >> 8) & 0xFF, policy & 0xFF),
            policy_smt: policy & guest_policy::SMT != 0,
            policy_migrate_ma: policy & guest_policy::MIGRATE_MA != 0,
            policy_debug: policy & guest_policy::DEBUG != 0,
            policy_single_socket: policy & guest_policy::SINGLE_SOCKET != 0,
            family_id: hex::encode(self.family_id()),
            image_id: hex::encode(self.image_id()),
            vmpl: self.vmpl(),
            signature_algo: self.signature_algo(),
            current_tcb: tcb(self.current_tcb_raw()),
            platform_info: format!("{:#x}", self.platform_info()),
            author_key_en: self.author_key_en(),
            mask_chip_key: self.mask_chip_key(),
            signing_key: self.signing_key().to_string(),
            report_data: hex::encode(self.report_data()),
            measurement: hex::encode(self.measurement()),
            host_data: hex::encode(self.host_data()),
            id_key_digest: hex::encode(self.id_key_digest()),
            author_key_digest: hex::encode(self.author_key_digest()),
            report_id: hex::encode(self.report_id()),
            report_id_ma: hex::encode(self.report_id_ma()),
            reported_tcb: tcb(self.reported_tcb_raw()),
            cpuid: self
                .cpuid()
                .map(|(f, m, s)| format!("family {f:#04x} model {m:#04x} stepping {s}")),
            product: product
                .or_else(|| self.cpuid_product())
                .map(|p| p.to_string()),
            tcb_layout: if layout == Product::Turin {
                "turin"
            } else {
                "milan/genoa"
            },
            chip_id: hex::encode(self.chip_id()),
            committed_tcb: tcb(self.committed_tcb_raw()),
            current_version: self.current_version().to_string(),
            committed_version: self.committed_version().to_string(),
            launch_tcb: tcb(self.launch_tcb_raw()),
            launch_mit_vector: self.mitigation_vectors().map(|(l, _)| format!("{l:#x}")),
            current_mit_vector: self.mitigation_vectors().map(|(_, c)| format!("{c:#x}")),
            signature_r: hex::encode(&self.signature_rs().0[..48]),
            signature_s: hex::encode(&self.signature_rs().1[..48]),
        }
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("measurement", &hex::encode(self.measurement()))
            .field("report_data", &hex::encode(self.report_data()))
            .finish_non_exhaustive()
    }
}

/// A raw TCB value with its decoding.
#[derive(Debug, Clone, Serialize)]
pub struct TcbField {
    /// The raw 64-bit value.
    pub raw: String,
    /// Its components in the product's layout.
    pub decoded: Tcb,
}

/// Every report field, decoded for people and JSON.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct ReportFields {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: String,
    pub policy_abi: String,
    pub policy_smt: bool,
    pub policy_migrate_ma: bool,
    pub policy_debug: bool,
    pub policy_single_socket: bool,
    pub family_id: String,
    pub image_id: String,
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: TcbField,
    pub platform_info: String,
    pub author_key_en: bool,
    pub mask_chip_key: bool,
    pub signing_key: String,
    pub report_data: String,
    pub measurement: String,
    pub host_data: String,
    pub id_key_digest: String,
    pub author_key_digest: String,
    pub report_id: String,
    pub report_id_ma: String,
    pub reported_tcb: TcbField,
    pub cpuid: Option<String>,
    pub product: Option<String>,
    pub tcb_layout: &'static str,
    pub chip_id: String,
    pub committed_tcb: TcbField,
    pub current_version: String,
    pub committed_version: String,
    pub launch_tcb: TcbField,
    pub launch_mit_vector: Option<String>,
    pub current_mit_vector: Option<String>,
    pub signature_r: String,
    pub signature_s: String,
}

/// Field offsets for building reports (the mock attester) and for tests.
pub(crate) mod offset {
    pub(crate) const VERSION: usize = 0x00;
    pub(crate) const GUEST_SVN: usize = 0x04;
    pub(crate) const POLICY: usize = 0x08;
    pub(crate) const VMPL: usize = 0x30;
    pub(crate) const SIGNATURE_ALGO: usize = 0x34;
    pub(crate) const CURRENT_TCB: usize = 0x38;
    pub(crate) const PLATFORM_INFO: usize = 0x40;
    pub(crate) const REPORT_DATA: usize = 0x50;
    pub(crate) const MEASUREMENT: usize = 0x90;
    pub(crate) const HOST_DATA: usize = 0xC0;
    pub(crate) const REPORT_ID: usize = 0x140;
    pub(crate) const REPORTED_TCB: usize = 0x180;
    pub(crate) const CHIP_ID: usize = 0x1A0;
    pub(crate) const COMMITTED_TCB: usize = 0x1E0;
    pub(crate) const CURRENT_VERSION: usize = 0x1E8;
    pub(crate) const COMMITTED_VERSION: usize = 0x1EC;
    pub(crate) const LAUNCH_TCB: usize = 0x1F0;
    pub(crate) const SIGNATURE: usize = 0x2A0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> [u8; REPORT_LEN] {
        let mut raw = [0u8; REPORT_LEN];
        raw[..4].copy_from_slice(&version.to_le_bytes());
        raw
    }

    #[test]
    fn rejects_wrong_lengths() {
        for len in [0, 1, REPORT_LEN - 1, REPORT_LEN + 1] {
            assert_eq!(
                Report::from_bytes(&vec![0; len]),
                Err(ReportError::Length { found: len })
            );
        }
    }

    #[test]
    fn rejects_unknown_versions() {
        for v in [0, 1, 4, 6, u32::MAX] {
            assert_eq!(
                Report::from_bytes(&blank(v)),
                Err(ReportError::UnsupportedVersion { found: v })
            );
        }
    }

    #[test]
    fn reads_hex_text() {
        let raw = blank(3);
        let text = hex::encode(raw) + "\n";
        assert_eq!(
            Report::from_bytes_or_hex(text.as_bytes())
                .expect("hex parses")
                .as_bytes(),
            &raw
        );
        assert!(Report::from_bytes_or_hex(b"zz").is_err());
    }

    #[test]
    fn reads_azure_hcl_reports() {
        let mut hcl = b"HCLA".to_vec();
        hcl.resize(0x20, 0);
        hcl.extend_from_slice(&blank(2));
        hcl.resize(2600, 0);
        assert_eq!(
            Report::from_bytes_or_hex(&hcl)
                .expect("HCL parses")
                .version(),
            2
        );
    }

    #[test]
    fn tcb_round_trips_in_both_layouts() {
        let t = Tcb {
            fmc: Some(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 5,
        };
        assert_eq!(Tcb::from_raw(t.to_raw(Product::Turin), Product::Turin), t);
        let m = Tcb { fmc: None, ..t };
        assert_eq!(Tcb::from_raw(m.to_raw(Product::Milan), Product::Milan), m);
        assert_eq!(m.to_raw(Product::Milan), 0x0504_0000_0000_0302);
    }

    #[test]
    fn tcb_lists_components_below_minimum() {
        let found = Tcb {
            fmc: None,
            bootloader: 4,
            tee: 0,
            snp: 24,
            microcode: 219,
        };
        let min = Tcb {
            fmc: None,
            bootloader: 4,
            tee: 1,
            snp: 25,
            microcode: 0,
        };
        assert_eq!(found.components_below(&min), vec!["tee", "snp"]);
    }

    #[test]
    fn product_comes_from_cpuid() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x31), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1300)) {
            if let Ok(r) = Report::from_bytes_or_hex(&bytes) {
                let _ = r.fields(None);
                let _ = r.nonzero_reserved();
            }
        }
    }
}

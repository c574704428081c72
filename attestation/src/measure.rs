//! The expected SEV-SNP launch MEASUREMENT of a guest, computed from its launch inputs:
//! firmware image, kernel, initrd, command line, vCPU count and type, VMM and guest
//! features. Pure functions over bytes; the caller reads the files.
//!
//! The launch digest (SNP ABI spec 56860, §8.17 SNP_LAUNCH_UPDATE, PAGE_INFO) starts at 48
//! zero bytes; every page the VMM adds sets
//! `LD = SHA-384(LD ‖ contents ‖ 0x0070 u16le ‖ page_type ‖ is_imi=0 ‖ vmpl3,2,1 perms=0 ‖ 0 ‖ gpa u64le)`,
//! where `contents` is the SHA-384 of the page for NORMAL and VMSA pages and zero for
//! the others. The pages are, in order:
//! 1. the firmware image, NORMAL pages ending at 4 GiB (or a precomputed digest of them,
//!    [`SnpLaunch::firmware_digest`]);
//! 2. the SEV metadata sections of the firmware, in file order (EC2 moves CPUID last; GCE
//!    adds SNP_SEC_MEM as UNMEASURED pages, the others as ZERO pages); the
//!    SNP_KERNEL_HASHES page holds the SHA-256 of the kernel, initrd and command line when
//!    a kernel is given;
//! 3. one VMSA per vCPU: the BSP's, then the APs'.
//!
//! Covered: QEMU/KVM, EC2 (its VMSA as sev-snp-measure 0.0.13 computes it) and GCE, and
//! Coconut-SVSM under QEMU ([`SvsmLaunch`]). The algorithm follows virtee/sev-snp-measure
//! 0.0.13; the `sev` crate 8's `measurement` module computes the same values for QEMU but
//! reads paths, has no GCE or SVSM, and keeps the EC2 VMSA that sev-snp-measure replaced.
//! Tests check both against `shared/vectors/measure`.
//!
//! Not covered: SEV and SEV-ES launch digests, ID blocks, IGVM files.
//!
//! ```
//! use veil_attestation::measure::{KernelHashes, SnpLaunch, Vmm};
//!
//! // A firmware without SEV metadata (a real one comes from an AmdSevX64 OVMF build).
//! let firmware = vec![0u8; 4096];
//! let launch = SnpLaunch {
//!     firmware: &firmware,
//!     firmware_digest: None,
//!     kernel: None,
//!     vcpus: 1,
//!     vcpu_sig: 0x800f12, // EPYC-v4
//!     vmm: Vmm::Qemu,
//!     guest_features: 0x1,
//! };
//! // No AP reset vector in this image: only one vCPU can be measured, and even that
//! // needs the firmware's SEV-ES reset block.
//! assert!(launch.measurement().is_err());
//!
//! // A kernel on firmware that cannot hold its hashes is refused.
//! let with_kernel = SnpLaunch { kernel: Some(KernelHashes::new(b"bzImage", None, None)), ..launch };
//! assert!(with_kernel.measurement().unwrap_err().to_string().contains("SNP_KERNEL_HASHES"));
//! ```

mod firmware;
mod vmsa;

use std::fmt;
use std::str::FromStr;

use ring::digest;

pub use firmware::{Firmware, Section, SectionKind};

use firmware::{guid, Guid};

/// A page.
pub(crate) const PAGE: usize = 4096;
/// The firmware image ends here.
pub(crate) const FOUR_GIB: u64 = 1 << 32;
/// The GPA a VMSA page is recorded with: (u64)-1, page aligned, bits above 51 cleared.
const VMSA_GPA: u64 = 0xffff_ffff_f000;

/// Why a measurement cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The firmware (or SVSM) image is not a non-empty whole number of 4 KiB pages that
    /// fits below 4 GiB.
    #[error(
        "firmware image of {len} bytes: must be a non-empty multiple of 4096 bytes, at most 4 GiB"
    )]
    FirmwareSize {
        /// Its length.
        len: usize,
    },
    /// The footer table or SEV metadata is malformed.
    #[error("firmware: {reason}")]
    MalformedFirmware {
        /// What is wrong.
        reason: String,
    },
    /// The SEV metadata names a section type this code does not know.
    #[error("firmware: unknown SEV metadata section type {kind:#x}")]
    UnknownSection {
        /// The type number.
        kind: u32,
    },
    /// The footer table lacks an entry the launch needs.
    #[error("firmware: no {name} entry in the OVMF footer table")]
    MissingTableEntry {
        /// The entry's name (its GUID's name in edk2).
        name: &'static str,
    },
    /// A kernel was given, but the firmware has no page for its hashes: QEMU would not
    /// launch it with `kernel-hashes=on` (only an AmdSevX64 OVMF build has the section).
    #[error("Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section (only an AmdSevX64 OVMF build can pin a kernel)")]
    NoKernelHashesSection,
    /// A metadata section whose size or position the launch cannot use.
    #[error("firmware: {kind:?} section at {gpa:#x} of {size:#x} bytes: {reason}")]
    InvalidSection {
        /// The section kind.
        kind: SectionKind,
        /// Its GPA.
        gpa: u32,
        /// Its size.
        size: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// No vCPU, or several without an AP reset vector in the firmware.
    #[error("{reason}")]
    Vcpus {
        /// What is wrong.
        reason: String,
    },
    /// The images do not fit in guest memory where the VMM puts them.
    #[error("{reason}")]
    Layout {
        /// What is wrong.
        reason: String,
    },
    /// A vCPU type this code has no CPUID signature for.
    #[error("unknown vCPU type {name:?} (known: EPYC, EPYC-v1..v4, EPYC-IBPB, EPYC-Rome[-v1..v3], EPYC-Milan[-v1,v2], EPYC-Genoa[-v1], EPYC-Turin[-v1,v2]; or give the signature)")]
    UnknownVcpuType {
        /// The name given.
        name: String,
    },
    /// A VMM type this code does not know.
    #[error("unknown VMM {name:?} (known: qemu, ec2, gce)")]
    UnknownVmm {
        /// The name given.
        name: String,
    },
}

/// The VMM that launches the guest: it decides the initial VMSA and a few page types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Vmm {
    /// QEMU/KVM: VMSA `rdx` = the vCPU's CPUID signature.
    Qemu,
    /// AWS EC2: CPUID page measured last; VMSA `rdx` = 0x600 (sev-snp-measure ≥ 0.0.13).
    Ec2,
    /// Google Compute Engine: SNP_SEC_MEM as UNMEASURED pages; its own VMSA.
    Gce,
}

impl Vmm {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Ec2 => "ec2",
            Vmm::Gce => "gce",
        }
    }
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Vmm {
    type Err = MeasureError;
    fn from_str(s: &str) -> Result<Self, MeasureError> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(Vmm::Qemu),
            "ec2" => Ok(Vmm::Ec2),
            "gce" => Ok(Vmm::Gce),
            _ => Err(MeasureError::UnknownVmm { name: s.to_owned() }),
        }
    }
}

/// The CPUID Fn0000_0001_EAX signature of a QEMU vCPU type (`-cpu NAME`), from the
/// `sev` crate's table of QEMU's EPYC models; EPYC-v4 gives `0x800f12`.
///
/// # Errors
/// [`MeasureError::UnknownVcpuType`] for a name not in the table.
pub fn vcpu_signature(name: &str) -> Result<u32, MeasureError> {
    let unknown = || MeasureError::UnknownVcpuType {
        name: name.to_owned(),
    };
    let cpu = sev::measurement::vcpu_types::CpuType::try_from(name).map_err(|_| unknown())?;
    u32::try_from(cpu.sig()).map_err(|_| unknown())
}

fn sha384(bytes: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    out.copy_from_slice(digest::digest(&digest::SHA384, bytes).as_ref());
    out
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// SNP ABI PAGE_INFO page types.
#[derive(Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// The launch digest as SNP_LAUNCH_UPDATE extends it.
struct LaunchDigest([u8; 48]);

impl LaunchDigest {
    /// SNP ABI Table "PAGE_INFO": `digest_cur ‖ contents ‖ length ‖ page_type ‖ imi_page ‖
    /// vmpl3/2/1 perms ‖ reserved ‖ gpa`.
    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // is_imi, vmpl3/2/1 permissions and the reserved byte are zero.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.0 = sha384(&info);
    }

    fn normal_pages(&mut self, gpa: u64, bytes: &[u8]) {
        debug_assert_eq!(bytes.len() % PAGE, 0);
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            self.update(PageType::Normal, gpa + (i * PAGE) as u64, &sha384(page));
        }
    }

    fn empty_pages(&mut self, page_type: PageType, gpa: u64, len: u32) {
        for i in 0..u64::from(len) / PAGE as u64 {
            self.update(page_type, gpa + i * PAGE as u64, &[0; 48]);
        }
    }
}

/// The SEV hash table header.
const HASH_TABLE_HEADER: Guid = guid("9438d606-4f22-4cc9-b479-a793d411fd21");
/// The command line's entry.
const CMDLINE_ENTRY: Guid = guid("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");
/// The initrd's entry.
const INITRD_ENTRY: Guid = guid("44baf731-3a2f-4bd7-9af1-41e29169781d");
/// The kernel's entry.
const KERNEL_ENTRY: Guid = guid("4de79437-abd2-427f-b835-d5b172d2045b");

/// Length of the hash table: header (GUID ‖ u16) and three entries (GUID ‖ u16 ‖ SHA-256).
const HASH_TABLE_LEN: usize = 18 + 3 * 50;
/// The table padded to 16 bytes, as QEMU writes it.
const PADDED_HASH_TABLE_LEN: usize = (HASH_TABLE_LEN + 15) & !15;

/// The SHA-256 digests QEMU (`kernel-hashes=on`) writes into the firmware's hashes page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the whole kernel file (bzImage) as given to `-kernel`.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd, or of nothing when none is given.
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by a NUL byte (a lone NUL when none).
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// The hashes of a kernel, an optional initrd and an optional command line
    /// (`-append`; absent and empty give the same value).
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> Self {
        KernelHashes::from_kernel_digests(
            sha256(kernel),
            sha256(initrd.unwrap_or_default()),
            append,
        )
    }

    /// The same, from the SHA-256 of the kernel and initrd (as a caller that streams the
    /// files computes them).
    pub fn from_kernel_digests(kernel: [u8; 32], initrd: [u8; 32], append: Option<&str>) -> Self {
        let mut cmdline = append.unwrap_or_default().as_bytes().to_vec();
        cmdline.push(0);
        KernelHashes {
            kernel,
            initrd,
            cmdline: sha256(&cmdline),
        }
    }

    /// The table as QEMU lays it out (`SevHashTable` in `target/i386/sev.c`), padded.
    pub fn table(&self) -> [u8; PADDED_HASH_TABLE_LEN] {
        let mut t = [0u8; PADDED_HASH_TABLE_LEN];
        t[..16].copy_from_slice(&HASH_TABLE_HEADER);
        t[16..18].copy_from_slice(&(HASH_TABLE_LEN as u16).to_le_bytes());
        for (i, (g, h)) in [
            (CMDLINE_ENTRY, &self.cmdline),
            (INITRD_ENTRY, &self.initrd),
            (KERNEL_ENTRY, &self.kernel),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 18 + i * 50;
            t[at..at + 16].copy_from_slice(&g);
            t[at + 16..at + 18].copy_from_slice(&50u16.to_le_bytes());
            t[at + 18..at + 50].copy_from_slice(h);
        }
        t
    }
}

/// An SNP launch: what determines its MEASUREMENT.
#[derive(Debug, Clone, Copy)]
pub struct SnpLaunch<'a> {
    /// The firmware image (`-bios`), exactly as given to the VMM.
    pub firmware: &'a [u8],
    /// The launch digest after the firmware pages alone ([`firmware_digest`]): when given,
    /// the firmware pages are not hashed again; `firmware` is still read for its metadata.
    pub firmware_digest: Option<[u8; 48]>,
    /// The kernel's, initrd's and command line's hashes, when a kernel is given.
    pub kernel: Option<KernelHashes>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID signature of the vCPU type ([`vcpu_signature`]); used by QEMU only.
    pub vcpu_sig: u32,
    /// The VMM.
    pub vmm: Vmm,
    /// SEV_FEATURES of the VMSAs: 0x1 (SNPActive), 0x21 with DebugSwap (Linux 6.6+ KVM).
    pub guest_features: u64,
}

/// The launch digest after only the firmware pages: sev-snp-measure's `snp:ovmf-hash`,
/// what [`SnpLaunch::firmware_digest`] takes.
///
/// # Errors
/// [`MeasureError::FirmwareSize`] for an image that is not whole pages below 4 GiB.
pub fn firmware_digest(firmware: &[u8]) -> Result<[u8; 48], MeasureError> {
    let fw = Firmware::parse(firmware)?;
    let mut ld = LaunchDigest([0; 48]);
    ld.normal_pages(FOUR_GIB - fw.as_bytes().len() as u64, fw.as_bytes());
    Ok(ld.0)
}

impl SnpLaunch<'_> {
    /// The expected MEASUREMENT.
    ///
    /// # Errors
    /// A [`MeasureError`] naming what the inputs lack: malformed firmware, a kernel on
    /// firmware without SNP_KERNEL_HASHES, no vCPU, no AP reset vector.
    pub fn measurement(&self) -> Result<[u8; 48], MeasureError> {
        let fw = Firmware::parse(self.firmware)?;
        if self.vcpus == 0 {
            return Err(MeasureError::Vcpus {
                reason: "at least one vCPU is needed".into(),
            });
        }
        if self.kernel.is_some() && !fw.has_section(SectionKind::KernelHashes) {
            return Err(MeasureError::NoKernelHashesSection);
        }
        let ap_eip = fw.ap_reset_eip()?;
        if ap_eip == 0 && self.vcpus > 1 {
            return Err(MeasureError::Vcpus {
                reason: "the firmware's AP reset vector is 0: it cannot start more than one vCPU"
                    .into(),
            });
        }
        let mut ld = match self.firmware_digest {
            Some(seed) => LaunchDigest(seed),
            None => {
                let mut ld = LaunchDigest([0; 48]);
                ld.normal_pages(FOUR_GIB - fw.as_bytes().len() as u64, fw.as_bytes());
                ld
            }
        };
        metadata_pages(&mut ld, &fw, self.kernel.as_ref(), self.vmm)?;
        let bsp = vmsa::reset_vmsa(vmsa::BSP_EIP, self.vmm, self.vcpu_sig, self.guest_features);
        let ap = vmsa::reset_vmsa(ap_eip, self.vmm, self.vcpu_sig, self.guest_features);
        for i in 0..self.vcpus {
            let page = if i == 0 { &bsp } else { &ap };
            ld.update(PageType::Vmsa, VMSA_GPA, &sha384(&page[..]));
        }
        Ok(ld.0)
    }
}

fn check_pages(s: &Section) -> Result<(), MeasureError> {
    if !s.size.is_multiple_of(PAGE as u32) || !s.gpa.is_multiple_of(PAGE as u32) {
        return Err(MeasureError::InvalidSection {
            kind: s.kind,
            gpa: s.gpa,
            size: s.size,
            reason: "not whole, aligned pages",
        });
    }
    Ok(())
}

fn metadata_pages(
    ld: &mut LaunchDigest,
    fw: &Firmware<'_>,
    kernel: Option<&KernelHashes>,
    vmm: Vmm,
) -> Result<(), MeasureError> {
    for s in fw.sections() {
        let gpa = u64::from(s.gpa);
        match s.kind {
            SectionKind::SecMem => {
                check_pages(s)?;
                let t = if vmm == Vmm::Gce {
                    PageType::Unmeasured
                } else {
                    PageType::Zero
                };
                ld.empty_pages(t, gpa, s.size);
            }
            SectionKind::Secrets => ld.update(PageType::Secrets, gpa, &[0; 48]),
            SectionKind::Cpuid => {
                if vmm != Vmm::Ec2 {
                    ld.update(PageType::Cpuid, gpa, &[0; 48]);
                }
            }
            SectionKind::SvsmCaa => {
                check_pages(s)?;
                ld.empty_pages(PageType::Zero, gpa, s.size);
            }
            SectionKind::KernelHashes => {
                check_pages(s)?;
                match kernel {
                    None => ld.empty_pages(PageType::Zero, gpa, s.size),
                    Some(k) => ld.normal_pages(gpa, &hashes_page(fw, s, k)?),
                }
            }
        }
    }
    if vmm == Vmm::Ec2 {
        for s in fw
            .sections()
            .iter()
            .filter(|s| s.kind == SectionKind::Cpuid)
        {
            ld.update(PageType::Cpuid, u64::from(s.gpa), &[0; 48]);
        }
    }
    Ok(())
}

/// The SNP_KERNEL_HASHES page: zero but for the table at the table GPA's page offset.
fn hashes_page(fw: &Firmware<'_>, s: &Section, k: &KernelHashes) -> Result<Vec<u8>, MeasureError> {
    if s.size as usize != PAGE {
        return Err(MeasureError::InvalidSection {
            kind: s.kind,
            gpa: s.gpa,
            size: s.size,
            reason: "the kernel hashes section must be one page",
        });
    }
    let offset = (fw.hashes_table_gpa()? as usize) & (PAGE - 1);
    if offset + PADDED_HASH_TABLE_LEN > PAGE {
        return Err(MeasureError::InvalidSection {
            kind: s.kind,
            gpa: s.gpa,
            size: s.size,
            reason: "the hashes table would cross the end of the page",
        });
    }
    let mut page = vec![0u8; PAGE];
    page[offset..offset + PADDED_HASH_TABLE_LEN].copy_from_slice(&k.table());
    Ok(page)
}

/// A launch of Coconut-SVSM and its OVMF under QEMU (sev-snp-measure `snp:svsm`).
///
/// QEMU maps the OVMF image to end at 4 GiB, leaves `vars_size` bytes below it for the
/// UEFI variables, and maps the SVSM image just below that. The digest covers the OVMF
/// pages, the SVSM pages, the SVSM's metadata sections, then one VMSA per vCPU, all
/// starting at the SVSM entry point.
#[derive(Debug, Clone, Copy)]
pub struct SvsmLaunch<'a> {
    /// The OVMF image built for Coconut-SVSM.
    pub ovmf: &'a [u8],
    /// The Coconut-SVSM image.
    pub svsm: &'a [u8],
    /// The size of the UEFI variable store between them.
    pub vars_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID signature of the vCPU type.
    pub vcpu_sig: u32,
}

impl SvsmLaunch<'_> {
    /// The expected MEASUREMENT.
    ///
    /// # Errors
    /// A [`MeasureError`] for malformed images, no vCPU, or images that do not fit.
    pub fn measurement(&self) -> Result<[u8; 48], MeasureError> {
        let ovmf = Firmware::parse(self.ovmf)?;
        let svsm = Firmware::parse(self.svsm)?;
        if self.vcpus == 0 {
            return Err(MeasureError::Vcpus {
                reason: "at least one vCPU is needed".into(),
            });
        }
        let ovmf_gpa = FOUR_GIB - self.ovmf.len() as u64;
        let svsm_gpa = ovmf_gpa
            .checked_sub(self.vars_size)
            .and_then(|end| end.checked_sub(self.svsm.len() as u64))
            .ok_or_else(|| MeasureError::Layout {
                reason: "the SVSM image and variable store do not fit below the OVMF image".into(),
            })?;
        if !self.vars_size.is_multiple_of(PAGE as u64) {
            return Err(MeasureError::Layout {
                reason: format!("vars size {:#x} is not whole pages", self.vars_size),
            });
        }
        let eip = u64::from(svsm.svsm_entry_offset()?) + svsm_gpa;
        let mut ld = LaunchDigest([0; 48]);
        ld.normal_pages(ovmf_gpa, ovmf.as_bytes());
        ld.normal_pages(svsm_gpa, svsm.as_bytes());
        metadata_pages(&mut ld, &svsm, None, Vmm::Qemu)?;
        let page = vmsa::svsm_vmsa(eip, self.vcpu_sig);
        let page_digest = sha384(&page[..]);
        for _ in 0..self.vcpus {
            ld.update(PageType::Vmsa, VMSA_GPA, &page_digest);
        }
        Ok(ld.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_table_matches_qemus_layout() {
        let k = KernelHashes::new(b"", None, None);
        let t = k.table();
        assert_eq!(t.len(), 176);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        assert_eq!(hex::encode(&t[..16]), "06d63894224fc94cb479a793d411fd21");
        // cmdline is SHA-256 of a lone NUL; initrd and kernel of nothing.
        assert_eq!(
            hex::encode(&t[18 + 18..18 + 50]),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex::encode(&t[118 + 18..118 + 50]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(&t[168..], &[0; 8]);
    }

    #[test]
    fn absent_and_empty_command_line_hash_alike() {
        assert_eq!(
            KernelHashes::new(b"k", None, None),
            KernelHashes::new(b"k", Some(b""), Some(""))
        );
        assert_ne!(
            KernelHashes::new(b"k", None, None),
            KernelHashes::new(b"k", None, Some("quiet"))
        );
    }

    #[test]
    fn vcpu_signature_of_epyc_v4() {
        assert_eq!(vcpu_signature("EPYC-v4").unwrap(), 0x800f12);
        assert_eq!(vcpu_signature("epyc-milan").unwrap(), 0xa00f11);
        assert!(matches!(
            vcpu_signature("Skylake"),
            Err(MeasureError::UnknownVcpuType { .. })
        ));
    }

    #[test]
    fn vmm_names_round_trip() {
        for v in [Vmm::Qemu, Vmm::Ec2, Vmm::Gce] {
            assert_eq!(v.name().parse::<Vmm>().unwrap(), v);
        }
        assert!("krun".parse::<Vmm>().is_err());
    }

    #[test]
    fn page_info_is_0x70_bytes_with_type_and_gpa() {
        // One NORMAL page of zeros at 0: recompute by hand.
        let mut ld = LaunchDigest([0; 48]);
        ld.normal_pages(0, &[0; PAGE]);
        let mut info = vec![0u8; 48];
        info.extend_from_slice(&sha384(&[0; PAGE]));
        info.extend_from_slice(&[0x70, 0, 1, 0, 0, 0, 0, 0]);
        info.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(ld.0, sha384(&info));
    }

    #[test]
    fn rejects_zero_vcpus() {
        let fw = vec![0u8; PAGE];
        let launch = SnpLaunch {
            firmware: &fw,
            firmware_digest: None,
            kernel: None,
            vcpus: 0,
            vcpu_sig: 0,
            vmm: Vmm::Qemu,
            guest_features: 1,
        };
        assert!(matches!(
            launch.measurement(),
            Err(MeasureError::Vcpus { .. })
        ));
    }
}

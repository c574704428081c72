//! The initial VMSA (SEV-ES save area) of each vCPU, as the VMM builds it: its SHA-384
//! enters the launch digest as a VMSA page.
//!
//! Offsets are those of AMD APM Vol. 2, Table B-4 ("VMSA Layout, State Save Area for
//! SEV-ES"); the register values are those that QEMU/KVM, EC2 and GCE load at reset
//! (as sev-snp-measure 0.0.13 models them; see `shared/notes/snp-real-path.md` §3).

use super::Vmm;

/// Size of a VMSA page.
pub(crate) const VMSA_LEN: usize = 4096;

/// Reset EIP of the bootstrap processor.
pub(crate) const BSP_EIP: u32 = 0xffff_fff0;

/// PAT MSR at reset (AMD APM Vol. 2, §A.3).
const DEFAULT_G_PAT: u64 = 0x0007_0406_0007_0406;
/// The PAT that the GCE hypervisor loads instead.
const GCE_G_PAT: u64 = 0x0007_0106;

// APM Vol. 2 Table B-4 offsets.
const ES: usize = 0x00;
const CS: usize = 0x10;
const SS: usize = 0x20;
const DS: usize = 0x30;
const FS: usize = 0x40;
const GS: usize = 0x50;
const GDTR: usize = 0x60;
const LDTR: usize = 0x70;
const IDTR: usize = 0x80;
const TR: usize = 0x90;
const EFER: usize = 0xd0;
const CR4: usize = 0x148;
const CR0: usize = 0x158;
const DR7: usize = 0x160;
const DR6: usize = 0x168;
const RFLAGS: usize = 0x170;
const RIP: usize = 0x178;
const G_PAT: usize = 0x268;
const RDX: usize = 0x310;
const SEV_FEATURES: usize = 0x3b0;
const XCR0: usize = 0x3e8;
const MXCSR: usize = 0x408;
const X87_FCW: usize = 0x410;

/// A VMSA page being filled in.
struct SaveArea(Box<[u8; VMSA_LEN]>);

impl SaveArea {
    fn new() -> Self {
        SaveArea(Box::new([0; VMSA_LEN]))
    }
    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
    /// A VMCB segment: `selector u16 ‖ attrib u16 ‖ limit u32 ‖ base u64`.
    fn seg(&mut self, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.u16(at, selector);
        self.u16(at + 2, attrib);
        self.u32(at + 4, limit);
        self.u64(at + 8, base);
    }
}

/// The VMSA of a vCPU that starts in real mode at `eip` (the BSP at [`BSP_EIP`], an AP at
/// the firmware's AP reset vector).
pub(crate) fn reset_vmsa(
    eip: u32,
    vmm: Vmm,
    vcpu_sig: u32,
    guest_features: u64,
) -> Box<[u8; 4096]> {
    // (cs attrib, ss attrib, tr attrib, rdx, mxcsr, fcw, g_pat)
    let (cs, ss, tr, rdx, mxcsr, fcw, g_pat) = match vmm {
        Vmm::Qemu => (
            0x9b,
            0x93,
            0x8b,
            u64::from(vcpu_sig),
            0x1f80,
            0x37f,
            DEFAULT_G_PAT,
        ),
        // EC2's BSP code segment is not marked accessed; rdx = 0x600 since
        // sev-snp-measure 0.0.13 ("to match the live measurement"; it was 0 before).
        Vmm::Ec2 => (
            if eip == BSP_EIP { 0x9a } else { 0x9b },
            0x92,
            0x83,
            0x600,
            0,
            0,
            DEFAULT_G_PAT,
        ),
        Vmm::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, GCE_G_PAT),
    };
    let mut a = SaveArea::new();
    a.seg(ES, 0, 0x93, 0xffff, 0);
    a.seg(CS, 0xf000, cs, 0xffff, u64::from(eip & 0xffff_0000));
    a.seg(SS, 0, ss, 0xffff, 0);
    a.seg(DS, 0, 0x93, 0xffff, 0);
    a.seg(FS, 0, 0x93, 0xffff, 0);
    a.seg(TR, 0, tr, 0xffff, 0);
    common(&mut a);
    a.u64(CR0, 0x10);
    a.u64(RIP, u64::from(eip & 0xffff));
    a.u64(G_PAT, g_pat);
    a.u64(RDX, rdx);
    a.u64(SEV_FEATURES, guest_features);
    a.u32(MXCSR, mxcsr);
    a.u16(X87_FCW, fcw);
    a.0
}

/// The VMSA of every vCPU under Coconut-SVSM on QEMU: protected mode, flat segments,
/// starting at the SVSM entry `eip`, SEV_FEATURES = SNPActive only.
///
/// x87 FCW is left 0: that is what the hardware-read SVSM vectors require (sev-snp-measure
/// never sets it for SVSM, and its values were read from a live guest).
pub(crate) fn svsm_vmsa(eip: u64, vcpu_sig: u32) -> Box<[u8; 4096]> {
    let mut a = SaveArea::new();
    a.seg(ES, 16, 0xc93, 0xffff_ffff, 0);
    a.seg(CS, 8, 0xc9b, 0xffff_ffff, 0);
    a.seg(SS, 16, 0xc93, 0xffff_ffff, 0);
    a.seg(DS, 16, 0xc93, 0xffff_ffff, 0);
    a.seg(FS, 16, 0xc93, 0xffff_ffff, 0);
    a.seg(TR, 0, 0x8b, 0xffff, 0);
    common(&mut a);
    a.u64(CR0, 0x11);
    a.u64(RIP, eip);
    a.u64(G_PAT, DEFAULT_G_PAT);
    a.u64(RDX, u64::from(vcpu_sig));
    a.u64(SEV_FEATURES, 0x1);
    a.u32(MXCSR, 0x1f80);
    a.0
}

/// Registers every variant sets alike: GS and the descriptor tables stay at their reset
/// values even under the SVSM's flat protected-mode segments.
fn common(a: &mut SaveArea) {
    a.seg(GS, 0, 0x93, 0xffff, 0);
    a.seg(GDTR, 0, 0, 0xffff, 0);
    a.seg(IDTR, 0, 0, 0xffff, 0);
    a.seg(LDTR, 0, 0x82, 0xffff, 0);
    a.u64(EFER, 0x1000); // KVM sets EFER.SVME
    a.u64(CR4, 0x40); // CR4.MCE
    a.u64(DR7, 0x400);
    a.u64(DR6, 0xffff_0ff0);
    a.u64(RFLAGS, 0x2);
    a.u64(XCR0, 0x1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(page: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(page[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn qemu_bsp_carries_the_signature_features_and_reset_vector() {
        let p = reset_vmsa(BSP_EIP, Vmm::Qemu, 0x800f12, 0x21);
        assert_eq!(u64_at(&p[..], RDX), 0x800f12);
        assert_eq!(u64_at(&p[..], SEV_FEATURES), 0x21);
        assert_eq!(u64_at(&p[..], RIP), 0xfff0);
        assert_eq!(u64_at(&p[..], CS + 8), 0xffff_0000);
        assert_eq!(&p[X87_FCW..X87_FCW + 2], &0x37fu16.to_le_bytes());
    }

    #[test]
    fn gce_and_ec2_ignore_the_signature() {
        for vmm in [Vmm::Gce, Vmm::Ec2] {
            let a = reset_vmsa(BSP_EIP, vmm, 0x800f12, 1);
            let b = reset_vmsa(BSP_EIP, vmm, 0, 1);
            assert_eq!(a, b);
            assert_eq!(u64_at(&a[..], RDX), 0x600);
        }
        let gce = reset_vmsa(BSP_EIP, Vmm::Gce, 0, 1);
        assert_eq!(u64_at(&gce[..], G_PAT), GCE_G_PAT);
    }

    #[test]
    fn ec2_bsp_and_ap_differ_only_where_they_should() {
        let bsp = reset_vmsa(BSP_EIP, Vmm::Ec2, 0, 1);
        let ap = reset_vmsa(0xffff_f000, Vmm::Ec2, 0, 1);
        assert_eq!(bsp[CS + 2], 0x9a);
        assert_eq!(ap[CS + 2], 0x9b);
    }
}

//! The parts of an OVMF (or Coconut-SVSM) image that a launch measurement depends on:
//! the GUIDed footer table that ends 32 bytes before the end of the image, and the SEV
//! metadata (`ASEV`) it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm` and
//! `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`):
//! - the footer entry sits at `len - 32 - 18`: `size u16le ‖ guid[16]`, with the footer
//!   GUID `96b582de-…`; `size` covers the whole table including this entry;
//! - the table is read backwards from the footer: each entry is `data ‖ size u16le ‖
//!   guid[16]`, where `size` counts the data and the 18-byte trailer;
//! - the metadata entry `dc886566-…` holds a u32le offset from the end of the image to
//!   `"ASEV" ‖ size u32 ‖ version u32 (= 1) ‖ num_items u32`, followed by `num_items`
//!   descriptors `gpa u32 ‖ size u32 ‖ type u32`.

use super::MeasureError;

/// An EFI GUID in the byte order of its in-memory (`bytes_le`) encoding.
pub(crate) type Guid = [u8; 16];

/// `bytes_le` of a GUID given in its text form (`a-b-c-d-e`): the fields `a`, `b` and `c`
/// little-endian, `d` and `e` as written. Malformed text is a panic, so a build error where
/// the GUID is a `const`.
pub(crate) const fn guid(text: &str) -> Guid {
    /// Where each byte of `bytes_le` stands in the text.
    const AT: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("a GUID's text holds hex digits"),
        }
    }
    let t = text.as_bytes();
    assert!(
        t.len() == 36 && t[8] == b'-' && t[13] == b'-' && t[18] == b'-' && t[23] == b'-',
        "a GUID's text is 8-4-4-4-12 hex digits"
    );
    let mut out = [0; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = nibble(t[AT[i]]) << 4 | nibble(t[AT[i] + 1]);
        i += 1;
    }
    out
}

/// The footer of the GUIDed table.
const TABLE_FOOTER: Guid = guid("96b582de-1fb2-45f7-baea-a366c55a082d");
/// Where the SEV metadata is.
const SEV_METADATA: Guid = guid("dc886566-984a-4798-a75e-5585a7bf67cc");
/// The GPA of the kernel-hashes table.
const SEV_HASH_TABLE_RV: Guid = guid("7255371f-3a3b-4b04-927b-1da6efa8d454");
/// The AP reset vector (SEV-ES reset block).
const SEV_ES_RESET_BLOCK: Guid = guid("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
/// Coconut-SVSM's entry point (offset in the image).
const SVSM_INFO: Guid = guid("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd");

/// Size of a table entry's trailer: `size u16le ‖ guid[16]`.
const ENTRY_TRAILER: usize = 18;
/// The footer entry ends this many bytes before the end of the image.
const FOOTER_GAP: usize = 32;

/// The kind of a metadata section, as `OvmfSevMetadata.asm` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SectionKind {
    /// 1, SNP_SEC_MEM: memory the firmware accepts (zero pages; UNMEASURED on GCE).
    SecMem,
    /// 2, SNP_SECRETS: the secrets page.
    Secrets,
    /// 3, CPUID: the CPUID page.
    Cpuid,
    /// 4, SVSM_CAA: the SVSM calling area (zero pages).
    SvsmCaa,
    /// 0x10, SNP_KERNEL_HASHES: the page holding the kernel, initrd and cmdline hashes.
    KernelHashes,
}

impl SectionKind {
    fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => SectionKind::SecMem,
            2 => SectionKind::Secrets,
            3 => SectionKind::Cpuid,
            4 => SectionKind::SvsmCaa,
            0x10 => SectionKind::KernelHashes,
            _ => return None,
        })
    }
}

/// One SEV metadata descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Guest physical address of the first page.
    pub gpa: u32,
    /// Length in bytes.
    pub size: u32,
    /// What the pages are.
    pub kind: SectionKind,
}

/// A parsed firmware (or SVSM) image: its bytes, its footer table and its metadata.
#[derive(Debug, Clone)]
pub struct Firmware<'a> {
    bytes: &'a [u8],
    table: Vec<(Guid, &'a [u8])>,
    sections: Vec<Section>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn malformed(reason: impl Into<String>) -> MeasureError {
    MeasureError::MalformedFirmware {
        reason: reason.into(),
    }
}

impl<'a> Firmware<'a> {
    /// Parses the footer table and SEV metadata of an image. An image without a footer
    /// table (or without metadata) parses, with no sections; a malformed one does not.
    ///
    /// # Errors
    /// [`MeasureError::FirmwareSize`] unless the image is a non-empty whole number of
    /// 4 KiB pages of at most 4 GiB; [`MeasureError::MalformedFirmware`] for a table or
    /// metadata that runs out of bounds, repeats a GUID or has a bad signature or version;
    /// [`MeasureError::UnknownSection`] for a section type this code does not know.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MeasureError> {
        let len = bytes.len();
        if len == 0 || !len.is_multiple_of(super::PAGE) || len as u64 > super::FOUR_GIB {
            return Err(MeasureError::FirmwareSize { len });
        }
        let table = parse_table(bytes)?;
        let mut firmware = Firmware {
            bytes,
            table,
            sections: Vec::new(),
        };
        firmware.sections = firmware.parse_metadata()?;
        Ok(firmware)
    }

    /// The image's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The metadata sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Whether the metadata has a section of this kind.
    pub fn has_section(&self, kind: SectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    fn entry(&self, g: &Guid) -> Option<&'a [u8]> {
        self.table.iter().find(|(k, _)| k == g).map(|(_, v)| *v)
    }

    fn entry_u32(&self, g: &Guid, name: &'static str) -> Result<u32, MeasureError> {
        let data = self
            .entry(g)
            .ok_or(MeasureError::MissingTableEntry { name })?;
        u32_at(data, 0).ok_or_else(|| malformed(format!("{name} entry shorter than 4 bytes")))
    }

    /// The GPA of the kernel-hashes table (`SEV_HASH_TABLE_RV_GUID`).
    pub(crate) fn hashes_table_gpa(&self) -> Result<u32, MeasureError> {
        self.entry_u32(&SEV_HASH_TABLE_RV, "SEV_HASH_TABLE_RV")
    }

    /// The AP reset EIP (`SEV_ES_RESET_BLOCK_GUID`).
    pub(crate) fn ap_reset_eip(&self) -> Result<u32, MeasureError> {
        self.entry_u32(&SEV_ES_RESET_BLOCK, "SEV_ES_RESET_BLOCK")
    }

    /// Coconut-SVSM's entry offset within its image (`SVSM_INFO_GUID`).
    pub(crate) fn svsm_entry_offset(&self) -> Result<u32, MeasureError> {
        self.entry_u32(&SVSM_INFO, "SVSM_INFO")
    }

    fn parse_metadata(&self) -> Result<Vec<Section>, MeasureError> {
        let Some(entry) = self.entry(&SEV_METADATA) else {
            return Ok(Vec::new());
        };
        let len = self.bytes.len();
        let from_end = u32_at(entry, 0)
            .ok_or_else(|| malformed("SEV metadata entry shorter than 4 bytes"))?
            as usize;
        let start = len
            .checked_sub(from_end)
            .ok_or_else(|| malformed("SEV metadata offset beyond the image"))?;
        let header = self
            .bytes
            .get(start..start + 16)
            .ok_or_else(|| malformed("SEV metadata header beyond the image"))?;
        if &header[..4] != b"ASEV" {
            return Err(malformed("SEV metadata signature is not ASEV"));
        }
        let size = u32_at(header, 4).unwrap_or(0) as usize;
        let version = u32_at(header, 8).unwrap_or(0);
        let count = u32_at(header, 12).unwrap_or(0) as usize;
        if version != 1 {
            return Err(malformed(format!("SEV metadata version {version}, not 1")));
        }
        let items = size
            .checked_sub(16)
            .and_then(|n| self.bytes.get(start + 16..start + 16 + n))
            .ok_or_else(|| malformed("SEV metadata size beyond the image"))?;
        if count.checked_mul(12).is_none_or(|n| n > items.len()) {
            return Err(malformed(format!(
                "SEV metadata claims {count} sections in {} bytes",
                items.len()
            )));
        }
        (0..count)
            .map(|i| {
                let gpa = u32_at(items, i * 12).unwrap_or(0);
                let size = u32_at(items, i * 12 + 4).unwrap_or(0);
                let kind = u32_at(items, i * 12 + 8).unwrap_or(0);
                let kind =
                    SectionKind::from_u32(kind).ok_or(MeasureError::UnknownSection { kind })?;
                Ok(Section { gpa, size, kind })
            })
            .collect()
    }
}

fn parse_table(bytes: &[u8]) -> Result<Vec<(Guid, &[u8])>, MeasureError> {
    let len = bytes.len();
    let Some(footer_at) = len.checked_sub(FOOTER_GAP + ENTRY_TRAILER) else {
        return Ok(Vec::new());
    };
    let footer = &bytes[footer_at..footer_at + ENTRY_TRAILER];
    if footer[2..] != TABLE_FOOTER {
        return Ok(Vec::new());
    }
    let total = usize::from(u16::from_le_bytes([footer[0], footer[1]]));
    let Some(table_len) = total.checked_sub(ENTRY_TRAILER) else {
        return Ok(Vec::new());
    };
    let mut rest = footer_at
        .checked_sub(table_len)
        .map(|start| &bytes[start..footer_at])
        .ok_or_else(|| malformed("footer table longer than the image"))?;
    let mut table: Vec<(Guid, &[u8])> = Vec::new();
    while rest.len() >= ENTRY_TRAILER {
        let trailer = &rest[rest.len() - ENTRY_TRAILER..];
        let size = usize::from(u16::from_le_bytes([trailer[0], trailer[1]]));
        let mut g: Guid = [0; 16];
        g.copy_from_slice(&trailer[2..]);
        if size < ENTRY_TRAILER || size > rest.len() {
            return Err(malformed(format!(
                "footer table entry of {size} bytes ({} left)",
                rest.len()
            )));
        }
        if table.iter().any(|(k, _)| *k == g) {
            return Err(malformed("footer table repeats a GUID"));
        }
        table.push((g, &rest[rest.len() - size..rest.len() - ENTRY_TRAILER]));
        rest = &rest[..rest.len() - size];
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-page image with a footer table holding `entries` (GUID, data), last first.
    pub(crate) fn image(entries: &[(Guid, Vec<u8>)], metadata: Option<&[u8]>) -> Vec<u8> {
        let mut img = vec![0u8; super::super::PAGE];
        let mut table = Vec::new();
        let mut entries = entries.to_vec();
        if let Some(m) = metadata {
            // Put the metadata at offset 0x100 of the page.
            img[0x100..0x100 + m.len()].copy_from_slice(m);
            let from_end = (img.len() - 0x100) as u32;
            entries.push((SEV_METADATA, from_end.to_le_bytes().to_vec()));
        }
        for (g, data) in &entries {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(g);
        }
        table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&TABLE_FOOTER);
        let end = img.len() - FOOTER_GAP;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }

    fn metadata(sections: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut m = b"ASEV".to_vec();
        m.extend_from_slice(&((16 + 12 * sections.len()) as u32).to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (gpa, size, kind) in sections {
            for v in [gpa, size, kind] {
                m.extend_from_slice(&v.to_le_bytes());
            }
        }
        m
    }

    #[test]
    fn guid_is_encoded_in_bytes_le_order() {
        assert_eq!(
            hex::encode(TABLE_FOOTER),
            "de82b596b21ff745baeaa366c55a082d"
        );
    }

    #[test]
    fn parses_table_entries_and_metadata_in_file_order() {
        let m = metadata(&[
            (0x80_0000, 0x9000, 1),
            (0x80_9000, 0x1000, 2),
            (0x810_000, 0x1000, 0x10),
        ]);
        let img = image(
            &[(SEV_ES_RESET_BLOCK, 0xffff_f000u32.to_le_bytes().to_vec())],
            Some(&m),
        );
        let fw = Firmware::parse(&img).unwrap();
        assert_eq!(fw.ap_reset_eip().unwrap(), 0xffff_f000);
        let kinds: Vec<SectionKind> = fw.sections().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SectionKind::SecMem,
                SectionKind::Secrets,
                SectionKind::KernelHashes
            ]
        );
        assert!(fw.has_section(SectionKind::KernelHashes));
        assert!(matches!(
            fw.hashes_table_gpa(),
            Err(MeasureError::MissingTableEntry {
                name: "SEV_HASH_TABLE_RV"
            })
        ));
    }

    #[test]
    fn image_without_footer_has_no_sections() {
        let img = vec![0u8; 4096];
        let fw = Firmware::parse(&img).unwrap();
        assert!(fw.sections().is_empty());
        assert!(fw.ap_reset_eip().is_err());
    }

    #[test]
    fn rejects_image_that_is_not_whole_pages() {
        for len in [0, 100, 4097] {
            assert!(matches!(
                Firmware::parse(&vec![0u8; len]),
                Err(MeasureError::FirmwareSize { .. })
            ));
        }
    }

    #[test]
    fn rejects_unknown_section_type() {
        let img = image(&[], Some(&metadata(&[(0, 0x1000, 7)])));
        assert!(matches!(
            Firmware::parse(&img),
            Err(MeasureError::UnknownSection { kind: 7 })
        ));
    }

    #[test]
    fn rejects_metadata_with_bad_signature_or_version() {
        let mut m = metadata(&[(0, 0x1000, 1)]);
        m[0] = b'X';
        assert!(matches!(
            Firmware::parse(&image(&[], Some(&m))),
            Err(MeasureError::MalformedFirmware { .. })
        ));
        let mut m = metadata(&[(0, 0x1000, 1)]);
        m[8] = 2;
        assert!(matches!(
            Firmware::parse(&image(&[], Some(&m))),
            Err(MeasureError::MalformedFirmware { .. })
        ));
    }

    #[test]
    fn rejects_metadata_claiming_more_sections_than_it_holds() {
        let mut m = metadata(&[(0, 0x1000, 1)]);
        m[12] = 200;
        assert!(matches!(
            Firmware::parse(&image(&[], Some(&m))),
            Err(MeasureError::MalformedFirmware { .. })
        ));
    }

    #[test]
    fn rejects_table_entry_running_out_of_the_table() {
        let mut img = image(&[(SVSM_INFO, vec![1, 2, 3, 4])], None);
        // The entry's size field sits 18 bytes before the footer entry.
        let at = img.len() - FOOTER_GAP - 2 * ENTRY_TRAILER;
        img[at..at + 2].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(&img),
            Err(MeasureError::MalformedFirmware { .. })
        ));
    }

    #[test]
    fn rejects_repeated_guid() {
        let img = image(&[(SVSM_INFO, vec![0; 4]), (SVSM_INFO, vec![1; 4])], None);
        assert!(matches!(
            Firmware::parse(&img),
            Err(MeasureError::MalformedFirmware { .. })
        ));
    }
}

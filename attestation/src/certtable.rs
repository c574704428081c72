//! The certificate table a host returns with an extended SNP report: parse and build.
//!
//! GHCB spec 56421 §4.1.8.1 (SNP Extended Guest Request): the table is an array of
//! 24-byte entries `guid[16] ‖ offset u32le ‖ length u32le`, ended by an all-zero entry.
//! Each offset is relative to the start of the table, and each blob (a DER certificate,
//! or a CRL) lies after the entries. The same bytes are the `/dev/sev-guest` ioctl's
//! certificate buffer and configfs-tsm's `auxblob` for the `sev_guest` provider.
//!
//! GUID bytes are stored in RFC 4122 order: the 16 bytes of the GUID as written, most
//! significant first (`63da758d-…` is `63 da 75 8d …` on the wire). That is how the `sev`
//! crate (`Uuid::as_bytes` when it builds a table, `Uuid::from_slice` when it parses one)
//! and go-sev-guest (`abi.ParseSnpCertTableHeader`) read and write them; a test below
//! checks this against `sev`'s own table builder.
//!
//! Parsing is strict: every offset and length is bounds-checked, blobs may not overlap
//! the entries or each other, a GUID may appear once, and a blob may not be empty.
//! Unknown GUIDs are kept as [`CertKind::Other`].
//!
//! ```
//! use veil_attestation::certtable::{CertEntry, CertKind, CertTable};
//!
//! let table = CertTable::new(vec![
//!     CertEntry::new(CertKind::Vcek, b"vcek der".to_vec()),
//!     CertEntry::new(CertKind::Ask, b"ask der".to_vec()),
//! ])?;
//! let bytes = table.to_bytes();
//! assert_eq!(&bytes[..4], &[0x63, 0xda, 0x75, 0x8d]);
//! assert_eq!(CertTable::from_bytes(&bytes)?, table);
//! assert_eq!(table.get(CertKind::Ask), Some(&b"ask der"[..]));
//! # Ok::<(), veil_attestation::certtable::CertTableError>(())
//! ```

use std::fmt;

/// Size of one table entry: `guid[16] ‖ offset u32le ‖ length u32le`.
pub const ENTRY_LEN: usize = 24;

/// A GUID in the table's wire order (RFC 4122, most significant byte first).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID: only the terminator carries it.
    pub const ZERO: Guid = Guid([0; 16]);

    /// The GUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, given as that 128-bit number.
    pub const fn from_u128(value: u128) -> Self {
        Guid(value.to_be_bytes())
    }

    /// The GUID from its 16 wire bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Guid(bytes)
    }

    /// Its 16 wire bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// What a table entry holds, by its GUID (GHCB spec 56421 §4.1.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertKind {
    /// The VCEK, `63da758d-e664-4564-adc5-f4b93be8accd`.
    Vcek,
    /// The VLEK, `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
    Vlek,
    /// The ASK (or, with a VLEK, the ASVK), `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
    Ask,
    /// The ARK, `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
    Ark,
    /// A CRL, `92f81bc3-5811-4d3d-97ff-d19f88dc67ea`.
    Crl,
    /// Any other GUID, kept as it is.
    Other(Guid),
}

impl CertKind {
    const KNOWN: [(CertKind, Guid); 5] = [
        (
            CertKind::Vcek,
            Guid::from_u128(0x63da758d_e664_4564_adc5_f4b93be8accd),
        ),
        (
            CertKind::Vlek,
            Guid::from_u128(0xa8074bc2_a25a_483e_aae6_39c045a0b8a1),
        ),
        (
            CertKind::Ask,
            Guid::from_u128(0x4ab7b379_bbac_4fe4_a02f_05aef327c782),
        ),
        (
            CertKind::Ark,
            Guid::from_u128(0xc0b406a4_a803_4952_9743_3fb6014cd0ae),
        ),
        (
            CertKind::Crl,
            Guid::from_u128(0x92f81bc3_5811_4d3d_97ff_d19f88dc67ea),
        ),
    ];

    /// The kind a GUID names; an unknown GUID is [`CertKind::Other`].
    pub fn from_guid(guid: Guid) -> Self {
        Self::KNOWN
            .iter()
            .find(|(_, g)| *g == guid)
            .map_or(CertKind::Other(guid), |(k, _)| *k)
    }

    /// The GUID that names this kind.
    pub fn guid(self) -> Guid {
        match self {
            CertKind::Other(guid) => guid,
            known => Self::KNOWN
                .iter()
                .find(|(k, _)| *k == known)
                .map(|(_, g)| *g)
                .expect("every named kind is in KNOWN"),
        }
    }
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertKind::Vcek => f.write_str("VCEK"),
            CertKind::Vlek => f.write_str("VLEK"),
            CertKind::Ask => f.write_str("ASK"),
            CertKind::Ark => f.write_str("ARK"),
            CertKind::Crl => f.write_str("CRL"),
            CertKind::Other(g) => write!(f, "GUID {g}"),
        }
    }
}

/// One entry: what it is and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// What the entry holds (its GUID).
    pub kind: CertKind,
    /// The blob: a DER certificate for the known certificate kinds.
    pub data: Vec<u8>,
}

impl CertEntry {
    /// An entry of this kind holding `data`.
    pub fn new(kind: CertKind, data: Vec<u8>) -> Self {
        CertEntry { kind, data }
    }
}

/// Why a certificate table cannot be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The bytes end before an all-zero entry.
    #[error("certificate table: no all-zero terminator entry in {len} bytes")]
    MissingTerminator {
        /// Bytes given.
        len: usize,
    },
    /// An entry has the all-zero GUID but a non-zero offset or length (not a terminator).
    #[error(
        "certificate table entry {index}: all-zero GUID with offset {offset}, length {length}"
    )]
    MalformedTerminator {
        /// Position of the entry.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// An entry's blob reaches past the end of the buffer.
    #[error(
        "certificate table entry {index} ({kind}): bytes {offset}..{offset}+{length} lie outside the {table_len}-byte buffer"
    )]
    OutOfBounds {
        /// Position of the entry.
        index: usize,
        /// What it holds.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// Size of the buffer.
        table_len: usize,
    },
    /// An entry's blob starts inside the entries themselves.
    #[error(
        "certificate table entry {index} ({kind}): offset {offset} lies inside the {header_len}-byte entry list"
    )]
    InsideEntries {
        /// Position of the entry.
        index: usize,
        /// What it holds.
        kind: CertKind,
        /// Its offset.
        offset: u32,
        /// Size of the entries, terminator included.
        header_len: usize,
    },
    /// Two entries' blobs share bytes.
    #[error("certificate table: the {first} and {second} blobs overlap")]
    Overlap {
        /// One entry.
        first: CertKind,
        /// The other.
        second: CertKind,
    },
    /// A GUID appears twice.
    #[error("certificate table: {kind} appears twice")]
    Duplicate {
        /// The repeated kind.
        kind: CertKind,
    },
    /// An entry has a zero-length blob.
    #[error("certificate table entry {index} ({kind}): empty blob")]
    EmptyBlob {
        /// Position of the entry.
        index: usize,
        /// What it holds.
        kind: CertKind,
    },
    /// An entry to build has the all-zero GUID, which would end the table.
    #[error("certificate table entry {index}: the all-zero GUID is the terminator")]
    ZeroGuid {
        /// Position of the entry.
        index: usize,
    },
    /// The table to build does not fit 32-bit offsets.
    #[error("certificate table: {len} bytes do not fit 32-bit offsets")]
    TooLarge {
        /// Size it would have.
        len: usize,
    },
}

/// A parsed (or to be built) certificate table: its entries, in table order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertTable {
    entries: Vec<CertEntry>,
}

impl CertTable {
    /// A table of these entries, in this order.
    ///
    /// # Errors
    /// [`CertTableError::Duplicate`], [`CertTableError::EmptyBlob`],
    /// [`CertTableError::ZeroGuid`] or [`CertTableError::TooLarge`].
    pub fn new(entries: Vec<CertEntry>) -> Result<Self, CertTableError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut len = (entries.len() + 1) * ENTRY_LEN;
        for (index, e) in entries.iter().enumerate() {
            if e.kind.guid() == Guid::ZERO {
                return Err(CertTableError::ZeroGuid { index });
            }
            if e.data.is_empty() {
                return Err(CertTableError::EmptyBlob {
                    index,
                    kind: e.kind,
                });
            }
            if !seen.insert(e.kind.guid()) {
                return Err(CertTableError::Duplicate { kind: e.kind });
            }
            len = len.saturating_add(e.data.len());
        }
        if u32::try_from(len).is_err() {
            return Err(CertTableError::TooLarge { len });
        }
        // `Other` of a known GUID is normalized, so that equal tables compare equal.
        let entries = entries
            .into_iter()
            .map(|e| CertEntry::new(CertKind::from_guid(e.kind.guid()), e.data))
            .collect();
        Ok(CertTable { entries })
    }

    /// Parses a table. Bytes after the last blob (a page's padding) are ignored.
    ///
    /// An empty buffer is not a table ([`CertTableError::MissingTerminator`]); a caller
    /// for which "no bytes" means "no certificates" (configfs-tsm's empty `auxblob`)
    /// says so before calling this.
    ///
    /// # Errors
    /// [`CertTableError`] naming the first problem found.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertTableError> {
        // Entries up to the terminator.
        let mut raw = Vec::new();
        loop {
            let index = raw.len();
            let start = index * ENTRY_LEN;
            let Some(entry) = bytes.get(start..start + ENTRY_LEN) else {
                return Err(CertTableError::MissingTerminator { len: bytes.len() });
            };
            let guid = Guid(entry[..16].try_into().expect("16 bytes"));
            let offset = u32::from_le_bytes(entry[16..20].try_into().expect("4 bytes"));
            let length = u32::from_le_bytes(entry[20..24].try_into().expect("4 bytes"));
            if guid == Guid::ZERO {
                if offset != 0 || length != 0 {
                    return Err(CertTableError::MalformedTerminator {
                        index,
                        offset,
                        length,
                    });
                }
                break;
            }
            raw.push((CertKind::from_guid(guid), offset, length));
        }
        let header_len = (raw.len() + 1) * ENTRY_LEN;

        let mut seen = std::collections::BTreeSet::new();
        let mut ranges = Vec::with_capacity(raw.len());
        for (index, &(kind, offset, length)) in raw.iter().enumerate() {
            if !seen.insert(kind.guid()) {
                return Err(CertTableError::Duplicate { kind });
            }
            if length == 0 {
                return Err(CertTableError::EmptyBlob { index, kind });
            }
            let start = offset as usize;
            if start < header_len {
                return Err(CertTableError::InsideEntries {
                    index,
                    kind,
                    offset,
                    header_len,
                });
            }
            let end = start
                .checked_add(length as usize)
                .filter(|end| *end <= bytes.len())
                .ok_or(CertTableError::OutOfBounds {
                    index,
                    kind,
                    offset,
                    length,
                    table_len: bytes.len(),
                })?;
            ranges.push((start, end, kind));
        }

        let mut sorted = ranges.clone();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
            if start < end {
                return Err(CertTableError::Overlap { first, second });
            }
        }

        let entries = ranges
            .into_iter()
            .map(|(start, end, kind)| CertEntry::new(kind, bytes[start..end].to_vec()))
            .collect();
        Ok(CertTable { entries })
    }

    /// The table's bytes: the entries, the terminator, then each blob in entry order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header_len = (self.entries.len() + 1) * ENTRY_LEN;
        let mut out = Vec::with_capacity(
            header_len + self.entries.iter().map(|e| e.data.len()).sum::<usize>(),
        );
        let mut offset = header_len;
        for e in &self.entries {
            out.extend_from_slice(e.kind.guid().as_bytes());
            out.extend_from_slice(&to_u32(offset).to_le_bytes());
            out.extend_from_slice(&to_u32(e.data.len()).to_le_bytes());
            offset += e.data.len();
        }
        out.extend_from_slice(&[0; ENTRY_LEN]);
        for e in &self.entries {
            out.extend_from_slice(&e.data);
        }
        out
    }

    /// The entries, in table order.
    pub fn entries(&self) -> &[CertEntry] {
        &self.entries
    }

    /// Whether the table has no entries (what upstream KVM hosts return).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The blob of this kind, if the table has one.
    pub fn get(&self, kind: CertKind) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.data.as_slice())
    }

    /// The certificates for an evidence bundle, in its order: the endorsement key first
    /// (the VLEK if `vlek`, else the VCEK), then the ASK, then the ARK. Whatever the table
    /// lacks is left out, possibly everything; the verifier completes the chain.
    pub fn evidence_certificates(&self, vlek: bool) -> Vec<Vec<u8>> {
        let vek = if vlek { CertKind::Vlek } else { CertKind::Vcek };
        [vek, CertKind::Ask, CertKind::Ark]
            .into_iter()
            .filter_map(|k| self.get(k).map(<[u8]>::to_vec))
            .collect()
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("CertTable::new checked the size fits 32 bits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(kind: CertKind, data: &[u8]) -> CertEntry {
        CertEntry::new(kind, data.to_vec())
    }

    fn sample() -> CertTable {
        CertTable::new(vec![
            entry(CertKind::Vcek, b"vcek"),
            entry(CertKind::Ask, b"ask!"),
            entry(CertKind::Ark, b"ark"),
        ])
        .expect("valid")
    }

    /// A table's raw bytes with entry `i`'s offset and length replaced.
    fn with_entry(mut bytes: Vec<u8>, i: usize, offset: u32, length: u32) -> Vec<u8> {
        let at = i * ENTRY_LEN + 16;
        bytes[at..at + 4].copy_from_slice(&offset.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&length.to_le_bytes());
        bytes
    }

    #[test]
    fn stores_guids_in_rfc_4122_order() {
        let bytes = CertKind::Vcek.guid();
        assert_eq!(
            bytes.as_bytes(),
            &[
                0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8,
                0xac, 0xcd
            ]
        );
        assert_eq!(
            CertKind::Vcek.guid().to_string(),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
        assert_eq!(
            CertKind::Vlek.guid().to_string(),
            "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
        );
        assert_eq!(
            CertKind::Ask.guid().to_string(),
            "4ab7b379-bbac-4fe4-a02f-05aef327c782"
        );
        assert_eq!(
            CertKind::Ark.guid().to_string(),
            "c0b406a4-a803-4952-9743-3fb6014cd0ae"
        );
    }

    /// The `sev` crate builds tables with `Uuid::as_bytes` (RFC order) and its own layout;
    /// ours must be byte-identical, and each must parse the other's.
    #[cfg(target_os = "linux")]
    #[test]
    fn matches_the_sev_crates_table_bytes() {
        use sev::firmware::host::{CertTableEntry, CertType};
        let ours = sample().to_bytes();
        let theirs = CertTableEntry::cert_table_to_vec_bytes(&[
            CertTableEntry::new(CertType::VCEK, b"vcek".to_vec()),
            CertTableEntry::new(CertType::ASK, b"ask!".to_vec()),
            CertTableEntry::new(CertType::ARK, b"ark".to_vec()),
        ])
        .expect("sev builds the table");
        assert_eq!(ours, theirs);
        let mut copy = ours.clone();
        let parsed = CertTableEntry::vec_bytes_to_cert_table(&mut copy).expect("sev parses");
        assert_eq!(parsed[0].cert_type, CertType::VCEK);
        assert_eq!(parsed[2].data(), b"ark");
    }

    #[test]
    fn round_trips_the_empty_table() {
        let empty = CertTable::default();
        assert_eq!(empty.to_bytes(), vec![0; ENTRY_LEN]);
        assert!(CertTable::from_bytes(&[0; ENTRY_LEN])
            .expect("terminator only")
            .is_empty());
        assert!(empty.evidence_certificates(false).is_empty());
    }

    #[test]
    fn ignores_page_padding_after_the_blobs() {
        let mut bytes = sample().to_bytes();
        bytes.resize(4096, 0);
        assert_eq!(CertTable::from_bytes(&bytes).expect("padded"), sample());
    }

    #[test]
    fn keeps_unknown_guids() {
        let g = Guid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let t = CertTable::new(vec![entry(CertKind::Other(g), b"x")]).expect("valid");
        let back = CertTable::from_bytes(&t.to_bytes()).expect("parses");
        assert_eq!(back.entries()[0].kind, CertKind::Other(g));
        // An `Other` spelling of a known GUID is the known kind.
        let t = CertTable::new(vec![entry(CertKind::Other(CertKind::Ark.guid()), b"x")])
            .expect("valid");
        assert_eq!(t.entries()[0].kind, CertKind::Ark);
    }

    #[test]
    fn orders_evidence_certificates_vek_ask_ark() {
        let t = CertTable::new(vec![
            entry(CertKind::Ark, b"ark"),
            entry(CertKind::Crl, b"crl"),
            entry(CertKind::Ask, b"ask"),
            entry(CertKind::Vlek, b"vlek"),
            entry(CertKind::Vcek, b"vcek"),
        ])
        .expect("valid");
        assert_eq!(
            t.evidence_certificates(false),
            vec![b"vcek".to_vec(), b"ask".to_vec(), b"ark".to_vec()]
        );
        assert_eq!(t.evidence_certificates(true)[0], b"vlek".to_vec());
        let only_ask = CertTable::new(vec![entry(CertKind::Ask, b"ask")]).expect("valid");
        assert_eq!(only_ask.evidence_certificates(false), vec![b"ask".to_vec()]);
    }

    #[test]
    fn rejects_table_without_terminator() {
        assert_eq!(
            CertTable::from_bytes(&[]),
            Err(CertTableError::MissingTerminator { len: 0 })
        );
        let bytes = sample().to_bytes();
        assert!(matches!(
            CertTable::from_bytes(&bytes[..3 * ENTRY_LEN + 10]),
            Err(CertTableError::MissingTerminator { .. })
        ));
    }

    #[test]
    fn rejects_malformed_terminator() {
        let mut bytes = sample().to_bytes();
        bytes[3 * ENTRY_LEN + 20] = 1;
        assert!(matches!(
            CertTable::from_bytes(&bytes),
            Err(CertTableError::MalformedTerminator { index: 3, .. })
        ));
    }

    #[test]
    fn rejects_blob_outside_the_buffer() {
        let bytes = sample().to_bytes();
        let len = bytes.len() as u32;
        for (offset, length) in [(len - 2, 3), (len, 1), (u32::MAX, 1), (100, u32::MAX)] {
            let bad = with_entry(bytes.clone(), 2, offset, length);
            assert!(
                matches!(
                    CertTable::from_bytes(&bad),
                    Err(CertTableError::OutOfBounds {
                        index: 2,
                        kind: CertKind::Ark,
                        ..
                    })
                ),
                "{offset} {length}"
            );
        }
    }

    #[test]
    fn rejects_blob_inside_the_entries() {
        let bad = with_entry(sample().to_bytes(), 0, 0, 4);
        assert!(matches!(
            CertTable::from_bytes(&bad),
            Err(CertTableError::InsideEntries {
                index: 0,
                header_len: 96,
                ..
            })
        ));
    }

    #[test]
    fn rejects_overlapping_blobs() {
        // The ASK's blob starts one byte into the VCEK's.
        let bad = with_entry(sample().to_bytes(), 1, 4 * ENTRY_LEN as u32 + 3, 4);
        assert_eq!(
            CertTable::from_bytes(&bad),
            Err(CertTableError::Overlap {
                first: CertKind::Vcek,
                second: CertKind::Ask
            })
        );
        // Two entries with the same range overlap too.
        let bad = with_entry(sample().to_bytes(), 1, 4 * ENTRY_LEN as u32, 4);
        assert!(matches!(
            CertTable::from_bytes(&bad),
            Err(CertTableError::Overlap { .. })
        ));
    }

    #[test]
    fn rejects_duplicate_guids() {
        let mut bytes = sample().to_bytes();
        let vcek = *CertKind::Vcek.guid().as_bytes();
        bytes[ENTRY_LEN..ENTRY_LEN + 16].copy_from_slice(&vcek);
        assert_eq!(
            CertTable::from_bytes(&bytes),
            Err(CertTableError::Duplicate {
                kind: CertKind::Vcek
            })
        );
        assert_eq!(
            CertTable::new(vec![entry(CertKind::Ask, b"a"), entry(CertKind::Ask, b"b")]),
            Err(CertTableError::Duplicate {
                kind: CertKind::Ask
            })
        );
    }

    #[test]
    fn rejects_empty_blob() {
        let bad = with_entry(sample().to_bytes(), 1, 100, 0);
        assert_eq!(
            CertTable::from_bytes(&bad),
            Err(CertTableError::EmptyBlob {
                index: 1,
                kind: CertKind::Ask
            })
        );
        assert!(matches!(
            CertTable::new(vec![entry(CertKind::Vcek, b"")]),
            Err(CertTableError::EmptyBlob { index: 0, .. })
        ));
    }

    #[test]
    fn refuses_to_build_an_entry_with_the_zero_guid() {
        assert_eq!(
            CertTable::new(vec![entry(CertKind::Other(Guid::ZERO), b"x")]),
            Err(CertTableError::ZeroGuid { index: 0 })
        );
    }

    #[test]
    fn errors_name_the_entry() {
        let bad = with_entry(sample().to_bytes(), 2, 1000, 5);
        let msg = CertTable::from_bytes(&bad).unwrap_err().to_string();
        assert!(msg.contains("entry 2 (ARK)"), "{msg}");
        assert!(msg.contains("outside"), "{msg}");
    }

    fn kind() -> impl Strategy<Value = CertKind> {
        prop_oneof![
            Just(CertKind::Vcek),
            Just(CertKind::Vlek),
            Just(CertKind::Ask),
            Just(CertKind::Ark),
            Just(CertKind::Crl),
            any::<[u8; 16]>()
                .prop_filter("not the terminator", |g| *g != [0; 16])
                .prop_map(|g| CertKind::Other(Guid::from_bytes(g))),
        ]
    }

    fn table() -> impl Strategy<Value = CertTable> {
        proptest::collection::btree_map(
            kind(),
            proptest::collection::vec(any::<u8>(), 1..300),
            0..6,
        )
        .prop_map(|m| {
            CertTable::new(m.into_iter().map(|(k, d)| CertEntry::new(k, d)).collect())
                .expect("distinct kinds, non-empty blobs")
        })
    }

    proptest! {
        #[test]
        fn built_tables_parse_back(t in table()) {
            prop_assert_eq!(CertTable::from_bytes(&t.to_bytes()), Ok(t));
        }

        #[test]
        fn every_truncation_is_refused(t in table()) {
            let bytes = t.to_bytes();
            for len in 0..bytes.len() {
                prop_assert!(CertTable::from_bytes(&bytes[..len]).is_err(), "len {}", len);
            }
        }

        #[test]
        fn random_bytes_never_panic_and_reparse(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(t) = CertTable::from_bytes(&bytes) {
                prop_assert_eq!(CertTable::from_bytes(&t.to_bytes()), Ok(t));
            }
        }

        #[test]
        fn random_entry_fields_never_panic(
            t in table(),
            i in 0usize..6,
            offset in any::<u32>(),
            length in any::<u32>(),
        ) {
            let bytes = t.to_bytes();
            let i = i % (t.entries().len() + 1);
            let bad = with_entry(bytes, i, offset, length);
            if let Ok(back) = CertTable::from_bytes(&bad) {
                prop_assert_eq!(CertTable::from_bytes(&back.to_bytes()), Ok(back));
            }
        }
    }
}

//! The certificate table with the real AMD certificates of `$VEIL_SNP_VECTORS` (default
//! `../shared/vectors/snp` beside the checkout): tables built from every set's VEK, ASK
//! and ARK parse back to the same certificates, every truncation is refused, and the
//! `sev` crate reads our bytes the same way. Without the vectors the tests print SKIPPED,
//! unless `VEIL_REQUIRE_VECTORS=1` (as in CI), where they fail.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde::Deserialize;
use veil_attestation::certtable::{CertEntry, CertKind, CertTable, Guid};
use veil_attestation::Certificate;

#[derive(Debug, Deserialize)]
struct Set {
    name: String,
    vek: String,
    ask: Option<String>,
    ark: Option<String>,
    chain: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    sets: Vec<Set>,
}

/// The real vectors' directory (the one lookup, in veil-tests: SKIPPED when absent,
/// a failure when `VEIL_REQUIRE_VECTORS=1`).
fn dir() -> Option<PathBuf> {
    veil_tests::vectors::dir()
}

fn certs(dir: &Path, rel: &str) -> Vec<Certificate> {
    let bytes = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Certificate::all_from_pem_or_der(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Each set's table: its VEK (as VLEK for the VLEK sets), then the ASK/ASVK and ARK.
fn tables() -> Vec<(String, CertTable)> {
    let Some(dir) = dir() else { return Vec::new() };
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest reads"))
            .expect("manifest parses");
    let mut out = Vec::new();
    for set in manifest.sets {
        let vek = certs(&dir, &set.vek).remove(0);
        let vek_kind = if set.name.contains("vlek") {
            CertKind::Vlek
        } else {
            CertKind::Vcek
        };
        let mut entries = vec![CertEntry::new(vek_kind, vek.as_der().to_vec())];
        let mut chain: Vec<Certificate> = [&set.ask, &set.ark, &set.chain]
            .into_iter()
            .flatten()
            .flat_map(|rel| certs(&dir, rel))
            .filter(|c| *c != vek)
            .collect();
        chain.dedup();
        // ASK (or ASVK) first, then the self-signed ARK.
        for c in chain.iter().take(2) {
            let kind = if c.is_signed_by(c) {
                CertKind::Ark
            } else {
                CertKind::Ask
            };
            if entries.iter().all(|e| e.kind != kind) {
                entries.push(CertEntry::new(kind, c.as_der().to_vec()));
            }
        }
        out.push((set.name, CertTable::new(entries).expect("valid table")));
    }
    assert!(!out.is_empty(), "the manifest lists no sets");
    out
}

#[test]
fn real_certificate_tables_round_trip() {
    for (name, table) in tables() {
        let bytes = table.to_bytes();
        let back = CertTable::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, table, "{name}");
        for entry in back.entries() {
            Certificate::from_der(&entry.data).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // The ioctl hands back a page-padded buffer (up to 16 KiB).
        let mut padded = bytes.clone();
        padded.resize(16 * 1024, 0);
        assert_eq!(
            CertTable::from_bytes(&padded).expect("padded"),
            table,
            "{name}"
        );
        let certs = back.evidence_certificates(name.contains("vlek"));
        assert_eq!(certs[0], table.entries()[0].data, "{name}: VEK first");
    }
}

#[test]
fn every_truncation_of_a_real_table_is_refused() {
    for (name, table) in tables() {
        let bytes = table.to_bytes();
        for len in 0..bytes.len() {
            assert!(
                CertTable::from_bytes(&bytes[..len]).is_err(),
                "{name}: {len} of {} bytes accepted",
                bytes.len()
            );
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_sev_crate_reads_real_tables_as_we_do() {
    use sev::firmware::host::{CertTableEntry, CertType};
    for (name, table) in tables() {
        let mut bytes = table.to_bytes();
        let theirs = CertTableEntry::vec_bytes_to_cert_table(&mut bytes).expect("sev parses");
        assert_eq!(theirs.len(), table.entries().len(), "{name}");
        for (t, ours) in theirs.iter().zip(table.entries()) {
            let kind = match t.cert_type {
                CertType::VCEK => CertKind::Vcek,
                CertType::VLEK => CertKind::Vlek,
                CertType::ASK => CertKind::Ask,
                CertType::ARK => CertKind::Ark,
                ref other => panic!("{name}: unexpected {other:?}"),
            };
            assert_eq!(kind, ours.kind, "{name}");
            assert_eq!(t.data(), ours.data.as_slice(), "{name}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Real certificates in any order, among random blobs under unknown GUIDs.
    #[test]
    fn shuffled_real_tables_with_random_blobs_round_trip(
        pick in any::<prop::sample::Index>(),
        order in any::<u64>(),
        extra in proptest::collection::vec(
            (any::<[u8; 16]>(), proptest::collection::vec(any::<u8>(), 1..200)),
            0..3,
        ),
    ) {
        let all = tables();
        if all.is_empty() {
            return Ok(());
        }
        let (_, table) = &all[pick.index(all.len())];
        let mut entries = table.entries().to_vec();
        for (g, data) in extra {
            let kind = CertKind::from_guid(Guid::from_bytes(g));
            if g != [0; 16] && entries.iter().all(|e| e.kind != kind) {
                entries.push(CertEntry::new(kind, data));
            }
        }
        let n = entries.len();
        for i in 0..n {
            entries.swap(i, (order as usize).wrapping_add(i * 7) % n);
        }
        let t = CertTable::new(entries).expect("distinct, non-empty");
        let bytes = t.to_bytes();
        prop_assert_eq!(CertTable::from_bytes(&bytes), Ok(t));
        let cut = (order as usize) % bytes.len();
        prop_assert!(CertTable::from_bytes(&bytes[..cut]).is_err());
    }
}

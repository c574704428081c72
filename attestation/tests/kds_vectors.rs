//! KDS paths for every real report of `$VEIL_SNP_VECTORS` (default `../shared/vectors/snp`
//! beside the checkout): the VCEK each set ships certifies exactly the hwid and TCB that
//! the path names; the VLEK set is refused with the reason. Without the vectors the test
//! prints SKIPPED, unless `VEIL_REQUIRE_VECTORS=1` (as in CI), where it fails.

use std::path::PathBuf;

use serde::Deserialize;
use veil_attestation::kds::{self, KdsError, VcekRequest};
use veil_attestation::{Certificate, Product, Report, SigningKey};

#[derive(Debug, Deserialize)]
struct Set {
    name: String,
    product: String,
    report: Option<String>,
    vek: String,
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

#[test]
fn every_real_report_names_the_vcek_it_ships() {
    let Some(dir) = dir() else { return };
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest reads"))
            .expect("manifest parses");
    let (mut vcek, mut vlek) = (0, 0);
    for set in manifest.sets {
        let Some(report_path) = &set.report else {
            continue;
        };
        let name = &set.name;
        let report = Report::from_bytes_or_hex(&std::fs::read(dir.join(report_path)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let product = Product::from_name(&set.product).expect("a product name");
        if let Some(p) = kds::report_product(&report) {
            assert_eq!(p, product, "{name}: the report names another product");
        }
        let vek = Certificate::all_from_pem_or_der(&std::fs::read(dir.join(&set.vek)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .remove(0);
        if report.signing_key() == SigningKey::Vlek {
            let err = VcekRequest::from_report(&report, product).unwrap_err();
            assert_eq!(err, KdsError::Vlek, "{name}");
            assert!(err.to_string().contains("VLEK must be supplied"), "{name}");
            vlek += 1;
            continue;
        }
        let req =
            VcekRequest::from_report(&report, product).unwrap_or_else(|e| panic!("{name}: {e}"));
        req.check(&vek).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(vek.hardware_id(), Some(req.hwid()), "{name}");
        assert_eq!(vek.tcb(product), Some(req.tcb()), "{name}");

        // The path spells the same hwid and SPLs, in KDS's order.
        let path = req.path();
        let hwid_len = if product == Product::Turin { 8 } else { 64 };
        let t = req.tcb();
        let mut query = String::new();
        if product == Product::Turin {
            query.push_str(&format!(
                "fmcSPL={:02}&",
                t.fmc.expect("Turin has an fmc SPL")
            ));
        }
        query.push_str(&format!(
            "blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            t.bootloader, t.tee, t.snp, t.microcode
        ));
        assert_eq!(
            path,
            format!(
                "/vcek/v1/{}/{}?{query}",
                set.product,
                hex::encode(&report.chip_id()[..hwid_len])
            ),
            "{name}"
        );
        assert_eq!(hex::encode(vek.hardware_id().unwrap()).len(), 2 * hwid_len);
        println!("{name}: {path}");
        vcek += 1;
    }
    // 17 reports: one VLEK, sixteen VCEKs.
    assert_eq!((vcek, vlek), (16, 1));
}

#[test]
fn a_vcek_for_another_chip_or_tcb_is_named_as_a_mismatch() {
    let Some(dir) = dir() else { return };
    let report =
        Report::from_bytes(&std::fs::read(dir.join("trustee/snp/test-report.bin")).unwrap())
            .unwrap();
    let req = VcekRequest::from_report(&report, Product::Milan).unwrap();
    // Another Milan chip's VCEK.
    let other = Certificate::all_from_pem_or_der(
        &std::fs::read(dir.join("virtee-sev/vcek_milan.der")).unwrap(),
    )
    .unwrap()
    .remove(0);
    let err = req.check(&other).unwrap_err().to_string();
    assert!(err.contains("hwID"), "{err}");
}
